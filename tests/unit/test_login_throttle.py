"""Login throttling (django-axes) on the site's login and the admin's, and its log lines."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"
WRONG = "Tr0ub4dor&3-wrong"


@pytest.fixture(autouse=True)
def fast_hashing(settings: Any) -> None:
    """Dozens of logins: a fast hasher keeps this module quick (hashing is not under test)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("ada", "", PASSWORD)


def _post(client: Client, url: str, password: str) -> Any:
    return client.post(url, {"username": "ada", "password": password})


@pytest.mark.parametrize("login", ["login", "admin:login"])
def test_failures_lock_the_login_and_then_the_right_password_is_refused(
    client: Client, staff: Any, login: str
) -> None:
    url = reverse(login)
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert _post(client, url, WRONG).status_code == 200  # the form again, with its error
    assert _post(client, url, WRONG).status_code == 429
    response = _post(client, url, PASSWORD)
    assert response.status_code == 429
    assert "Too many login attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_lockout_on_the_site_login_also_holds_on_the_admin_login(
    client: Client, staff: Any
) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _post(client, reverse("login"), WRONG)
    assert _post(client, reverse("admin:login"), PASSWORD).status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_lockout_is_per_username_and_address(staff: Any, django_user_model: Any) -> None:
    """Someone failing from one address does not lock the user out from another."""
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _post(attacker, reverse("login"), WRONG)
    operator = Client(REMOTE_ADDR="198.51.100.7")
    response = _post(operator, reverse("login"), PASSWORD)
    assert response.status_code == 302
    assert operator.session["_auth_user_id"] == str(staff.pk)


def test_a_success_before_the_limit_starts_the_count_again(client: Client, staff: Any) -> None:
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        _post(client, reverse("login"), WRONG)
    assert _post(client, reverse("login"), PASSWORD).status_code == 302
    client.logout()
    for _ in range(limit - 1):
        assert _post(client, reverse("login"), WRONG).status_code == 200
    assert _post(client, reverse("login"), PASSWORD).status_code == 302


def test_each_failure_is_one_log_line_with_username_and_address_never_the_password(
    client: Client, staff: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failures = settings.AXES_FAILURE_LIMIT - 1
    for _ in range(failures):
        _post(client, reverse("login"), WRONG)
    _post(client, reverse("admin:login"), WRONG)  # the last allowed failure: locks
    _post(client, reverse("login"), PASSWORD)  # refused while locked
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    failed = [m for m in warnings if "login failure by" in m]
    assert len(failed) == failures + 2, warnings
    assert all('username: "ada"' in m and 'ip_address: "127.0.0.1"' in m for m in failed)
    assert sum("Locking out" in m for m in warnings) == 2  # the lock, and the refusal
    everything = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert WRONG not in everything
    assert PASSWORD not in everything
