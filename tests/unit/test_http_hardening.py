"""Pages with QR and pairing codes are never cached; logins are short; refusals log one line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from sessions_app.logfilters import ClientErrorFilter
from sessions_app.models import WaSession

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(staff_user: Any) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def assert_never_cached(response: Any) -> None:
    cache_control = {part.strip() for part in response["Cache-Control"].split(",")}
    assert {"no-cache", "no-store", "must-revalidate", "private"} <= cache_control
    assert "Expires" in response


def test_pages_with_qr_and_pairing_codes_are_never_cached(staff_client: Client) -> None:
    session = WaSession.objects.create(
        name="qr", state="qr_required", qr_code="https://wa.me/x#a", pairing_code="ABCD-EFGH"
    )
    detail = staff_client.get(reverse("sessions:detail", args=[session.pk]))
    assert b"ABCD-EFGH" in detail.content
    assert_never_cached(detail)
    assert_never_cached(staff_client.get(reverse("sessions:list")))
    assert_never_cached(staff_client.get(reverse("sessions:create")))
    created = staff_client.post(
        reverse("sessions:create"), {"name": "fresh"}, HTTP_ACCEPT="application/json"
    )
    assert "html" in created.json(), "the answer embeds the detail page"
    assert_never_cached(created)
    action = staff_client.post(
        reverse("sessions:action", args=[session.pk, "stop"]), HTTP_ACCEPT="application/json"
    )
    assert_never_cached(action)


def test_a_login_lasts_eight_hours_by_default(staff_user: Any) -> None:
    assert django_settings.SESSION_COOKIE_AGE == 8 * 3600
    client = Client()
    response = client.post(
        reverse("login"), {"username": "ada", "password": "correct horse battery"}
    )
    assert response.status_code == 302
    assert int(response.cookies["sessionid"]["max-age"]) == 8 * 3600
    assert client.session.get_expiry_age() == 8 * 3600


def test_the_login_lifetime_is_settable() -> None:
    env = {
        **os.environ,
        "WACONNECT_SESSION_AGE": "900",
        "DJANGO_SETTINGS_MODULE": "waconnect.settings",
    }
    code = (
        "import django; django.setup(); "
        "from django.conf import settings; print(settings.SESSION_COOKIE_AGE)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "900"


# -- logs -----------------------------------------------------------------------------


def one_line_records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    records = [r for r in caplog.records if r.name == logger]
    for record in records:
        assert record.exc_info is None and not record.exc_text, "no traceback"
        assert "\n" not in record.getMessage()
    return records


def test_a_403_logs_one_line_without_traceback(
    caplog: pytest.LogCaptureFixture, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user("nobody", is_staff=True)
    client = Client()
    client.force_login(user)
    with caplog.at_level(logging.WARNING):
        assert client.get(reverse("sessions:list")).status_code == 403
    records = one_line_records(caplog, "django.request")
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", "Forbidden (Permission denied): /sessions/")
    ]


def test_a_bad_host_logs_one_warning_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert Client(HTTP_HOST="evil.example").get("/sessions/").status_code == 400
    records = one_line_records(caplog, "django.security.DisallowedHost")
    assert len(records) == 1
    assert records[0].levelname == "WARNING"
    assert "evil.example" in records[0].getMessage()


def test_a_server_error_keeps_its_traceback() -> None:
    try:
        raise RuntimeError("a bug of ours")
    except RuntimeError:
        record = logging.LogRecord(
            "django.request",
            logging.ERROR,
            __file__,
            1,
            "Internal Server Error: %s",
            ("/x",),
            sys.exc_info(),
        )
    assert ClientErrorFilter().filter(record)
    assert record.exc_info is not None and record.levelname == "ERROR"


def test_the_console_shows_exactly_one_line_per_refusal(tmp_path: Path) -> None:
    """What an operator sees: the real LOGGING in a fresh process, nothing captured by pytest."""
    env = {**os.environ, "WACONNECT_DATA_DIR": str(tmp_path), "DEBUG": "on"}
    for name in ("DATABASE_URL", "REDIS_URL", "TEST_DATABASE_NAME"):
        env.pop(name, None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=REPO, check=True)
    script = (
        "import sys\n"
        "from django.test import Client\n"
        "from django.contrib.auth import get_user_model\n"
        "user = get_user_model().objects.create_user('nobody', is_staff=True)\n"
        "client = Client(HTTP_HOST='localhost'); client.force_login(user)\n"
        "print('--- 403', file=sys.stderr, flush=True)\n"
        "client.get('/sessions/')\n"
        "print('--- bad host', file=sys.stderr, flush=True)\n"
        "Client(HTTP_HOST='evil.example').get('/sessions/')\n"
        "print('--- end', file=sys.stderr, flush=True)\n"
    )
    out = subprocess.run(
        [*manage, "shell", "-v0", "-c", script], env=env, cwd=REPO, capture_output=True, text=True
    )
    lines = out.stderr.splitlines()
    forbidden = lines[lines.index("--- 403") + 1 : lines.index("--- bad host")]
    bad_host = lines[lines.index("--- bad host") + 1 : lines.index("--- end")]
    assert len(forbidden) == 1 and "Forbidden (Permission denied): /sessions/" in forbidden[0]
    assert len(bad_host) == 1 and "WARNING django.security.DisallowedHost" in bad_host[0]
