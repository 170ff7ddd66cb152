"""The web tier over real HTTP, as the Procfile runs it (plain ``daphne``, no runserver):
static files in both modes, and production behind a TLS proxy."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daphne_server import ROOT, base_env, daphne, manage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HOST = "waconnect.example.com"
PASSWORD = "proxy-Admin-5120"
CLIENT_IP = "203.0.113.5"
#: What a TLS proxy in front of Daphne adds to every request.
PROXY = {"host": HOST, "x-forwarded-proto": "https", "x-forwarded-for": CLIENT_IP}


def production_env(tmp_path: Path) -> dict[str, str]:
    return base_env(
        {
            "DEBUG": "off",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": HOST,
            "WACONNECT_DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'waconnect.sqlite3'}",
            "STATIC_ROOT": str(tmp_path / "static"),
            "WACONNECT_DRIVER": "simulated",
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        }
    )


def test_check_deploy_finds_nothing_on_the_production_settings(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    env["DATABASE_URL"] = "postgres://waconnect@db.internal:5432/waconnect"
    env["REDIS_URL"] = "redis://redis.internal:6379/0"
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.fixture
def debug_daphne(tmp_path: Path) -> Iterator[str]:
    """Plain ``daphne`` with DEBUG on and no collectstatic: what a developer may run."""
    env = base_env(
        {
            "DEBUG": "on",
            "WACONNECT_DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'waconnect.sqlite3'}",
            "WACONNECT_DRIVER": "simulated",
        }
    )
    manage(env, "migrate", "--noinput", "-v", "0")
    with daphne(env, tmp_path / "daphne.log") as url:
        yield url


def test_plain_daphne_with_debug_on_serves_the_pages_scripts(debug_daphne: str) -> None:
    page = httpx.get(f"{debug_daphne}/accounts/login/")
    assert page.status_code == 200
    css = re.findall(r'href="(/static/[^"]+)"', page.text)
    assert css, page.text
    for path in [*css, "/static/waconnect/live.js", "/static/waconnect/session.js"]:
        response = httpx.get(f"{debug_daphne}{path}")
        assert response.status_code == 200, path
        on_disk = ROOT / "static" / path.removeprefix("/static/")
        assert response.content == on_disk.read_bytes()
    assert (
        httpx.get(f"{debug_daphne}/static/waconnect/live.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )


@pytest.fixture
def production(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The Procfile's release and web steps with production settings."""
    env = production_env(tmp_path)
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "collectstatic", "--noinput", "-v", "0")
    manage(env, "ensure_admin")
    log = tmp_path / "daphne.log"
    with daphne(env, log) as url:
        yield url, log


def _cookies(response: httpx.Response) -> dict[str, str]:
    """Cookie name → its Set-Cookie line (httpx would not send Secure ones over http://)."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


def _value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def test_plain_http_is_redirected_to_https(production: tuple[str, Path]) -> None:
    url, _log = production
    response = httpx.get(f"{url}/accounts/login/", headers={"host": HOST})
    assert response.status_code == 301
    assert response.headers["location"] == f"https://{HOST}/accounts/login/"


def test_behind_a_tls_proxy_the_login_works_with_secure_cookies_and_hsts(
    production: tuple[str, Path],
) -> None:
    url, log = production
    page = httpx.get(f"{url}/accounts/login/", headers=PROXY)
    assert page.status_code == 200
    assert page.headers["strict-transport-security"].startswith("max-age=31536000")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "camera=()" in page.headers["permissions-policy"]
    csrf_cookie = _cookies(page)["csrftoken"]
    assert "Secure" in csrf_cookie
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    # Static files are the collected, hashed ones, served by the app itself.
    hashed_css = re.search(r'href="(/static/waconnect/app\.[0-9a-f]{12}\.css)"', page.text)
    assert hashed_css, page.text
    assert httpx.get(f"{url}{hashed_css.group(1)}", headers=PROXY).status_code == 200

    def login(password: str) -> httpx.Response:
        return httpx.post(
            f"{url}/accounts/login/",
            headers={
                **PROXY,
                "origin": f"https://{HOST}",
                "referer": f"https://{HOST}/accounts/login/",
                "cookie": f"csrftoken={_value(csrf_cookie)}",
            },
            data={
                "csrfmiddlewaretoken": token.group(1),
                "username": "admin",
                "password": password,
            },
        )

    wrong = login("not-the-password")
    assert wrong.status_code == 200  # the form again: the CSRF origin check passed
    response = login(PASSWORD)
    assert response.status_code == 302, response.text[:500]
    assert response.headers["location"] == "/sessions/"
    session_cookie = _cookies(response)["sessionid"]
    assert "Secure" in session_cookie
    assert "HttpOnly" in session_cookie
    # The failed login was logged with the client's address (from the proxy), once.
    lines = [line for line in log.read_text().splitlines() if "login failure by" in line]
    assert len(lines) == 1, lines
    assert f'ip_address: "{CLIENT_IP}"' in lines[0]
    assert "not-the-password" not in log.read_text()
