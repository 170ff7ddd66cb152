"""Making tokens: the token page, the Django admin and ``manage.py create_api_token``."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from api.issuing import create_token
from api.models import ApiToken
from sessions_app.models import WaSession
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(api_user: Any) -> Client:
    client = Client()
    client.force_login(api_user)
    return client


def test_the_token_page_shows_a_new_token_once(staff_client: Client) -> None:
    session = WaSession.objects.create(name="sales")
    response = staff_client.post(
        reverse("api:tokens"),
        {
            "name": "crm-prod",
            "scopes": ["sessions:read"],
            "sessions": [session.pk],
            "expires_in": "30",
        },
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    text = response.context["new_token_text"]
    assert text.encode() in response.content
    assert b'id="copy-token"' in response.content
    token = ApiToken.objects.get(name="crm-prod")
    assert (token.scopes, list(token.sessions.all()), token.expires_at is not None) == (
        ["sessions:read"],
        [session],
        True,
    )
    assert ApiClient(text).get("/sessions").status_code == 200
    again = staff_client.get(reverse("api:tokens"))
    assert text.encode() not in again.content  # listed by prefix only
    assert f"wac_{token.prefix}_".encode() in again.content


def test_the_token_page_refuses_bad_input(staff_client: Client) -> None:
    response = staff_client.post(reverse("api:tokens"), {"name": "", "scopes": ["nope"]})
    assert response.status_code == 200
    assert response.context["form"].errors.keys() == {"name", "scopes"}
    assert not ApiToken.objects.exists()


def test_revoking_from_the_page_stops_the_token(
    staff_client: Client, make_token: Any, django_user_model: Any
) -> None:
    text = make_token()
    token = ApiToken.objects.get()
    theirs = make_token(user=django_user_model.objects.create_user("eve", is_staff=True))
    response = staff_client.post(reverse("api:revoke", args=[token.pk]))
    assert response.status_code == 302
    assert ApiClient(text).get("/sessions").json()["code"] == "token_revoked"
    other = ApiToken.objects.get(prefix=theirs.split("_")[1])
    assert staff_client.post(reverse("api:revoke", args=[other.pk])).status_code == 404


def test_the_token_page_is_for_staff_only(client: Client, plain_user: Any) -> None:
    assert client.get(reverse("api:tokens")).status_code == 302
    client.force_login(plain_user)
    assert client.get(reverse("api:tokens")).status_code == 403
    assert (
        client.post(reverse("api:tokens"), {"name": "x", "scopes": ["sessions:read"]}).status_code
        == 403
    )
    assert not ApiToken.objects.exists()


@pytest.fixture
def admin_client_(django_user_model: Any) -> Client:
    admin = django_user_model.objects.create_superuser("root", "", "pw")
    client = Client()
    client.force_login(admin)
    return client


def test_the_admin_creates_a_token_and_shows_it_once(admin_client_: Client, api_user: Any) -> None:
    response = admin_client_.post(
        reverse("admin:api_apitoken_add"),
        {"name": "from-admin", "user": api_user.pk, "scopes": ["sessions:read", "sessions:write"]},
    )
    assert response.status_code == 200, response.content[:2000]
    text = response.context["token_text"]
    assert text.encode() in response.content
    token = ApiToken.objects.get(name="from-admin")
    assert token.matches(text.split("_", 2)[2])
    assert ApiClient(text).post("/sessions", {"name": "via-admin"}).status_code == 201
    listing = admin_client_.get(reverse("admin:api_apitoken_changelist"))
    assert f"wac_{token.prefix}_".encode() in listing.content
    assert text.encode() not in listing.content


def test_the_admin_revoke_action(admin_client_: Client, make_token: Any) -> None:
    text = make_token()
    token = ApiToken.objects.get()
    admin_client_.post(
        reverse("admin:api_apitoken_changelist"),
        {"action": "revoke_tokens", "_selected_action": [token.pk]},
    )
    assert ApiClient(text).get("/sessions").json()["code"] == "token_revoked"


def test_create_api_token_prints_the_token_only(api_user: Any) -> None:
    WaSession.objects.create(name="sales")
    out = io.StringIO()
    call_command(
        "create_api_token",
        "--user", api_user.username,
        "--name", "ci",
        "--scope", "sessions:read",
        "--scope", "sessions:write",
        "--session", "sales",
        "--expires-in-days", "7",
        stdout=out,
    )  # fmt: skip
    text = out.getvalue().strip()
    assert text.startswith("wac_") and "\n" not in text
    token = ApiToken.objects.get(name="ci")
    assert token.scopes == ["sessions:read", "sessions:write"]
    assert [s.name for s in token.sessions.all()] == ["sales"]
    assert ApiClient(text).get("/sessions").status_code == 200


@pytest.mark.parametrize(
    "args",
    [
        ["--user", "nobody", "--name", "x", "--scope", "sessions:read"],
        ["--user", "ada", "--name", "x", "--scope", "sessions:read", "--session", "missing"],
        ["--user", "ada", "--name", "x", "--scope", "sessions:read", "--expires-in-days", "0"],
    ],
)
def test_create_api_token_refuses_bad_arguments(api_user: Any, args: list[str]) -> None:
    with pytest.raises(CommandError):
        call_command("create_api_token", *args, stdout=io.StringIO())
    assert not ApiToken.objects.exists()


def test_create_api_token_refuses_unknown_scopes(api_user: Any) -> None:
    with pytest.raises(CommandError):
        call_command(
            "create_api_token",
            "--user",
            "ada",
            "--name",
            "x",
            "--scope",
            "all",
            stdout=io.StringIO(),
        )


def test_the_token_page_names_sessions_only_to_those_who_may_see_them(
    client: Client, django_user_model: Any
) -> None:
    WaSession.objects.create(name="secret-team")
    bare = django_user_model.objects.create_user(username="bare", is_staff=True)
    client.force_login(bare)  # staff, but without view_wasession
    response = client.get(reverse("api:tokens"))
    assert response.status_code == 200
    assert b"secret-team" not in response.content


def _token_admin(django_user_model: Any) -> tuple[Any, Client]:
    """A staff user who may manage API tokens in the admin, but is no superuser."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="tess", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            codename__in=["add_apitoken", "change_apitoken", "view_apitoken", "view_wasession"]
        )
    )
    client = Client()
    client.force_login(user)
    return user, client


def test_only_a_superuser_issues_a_token_for_someone_else(
    django_user_model: Any, api_user: Any
) -> None:
    tess, client = _token_admin(django_user_model)
    root = django_user_model.objects.create_superuser("root2", "", "pw")
    client.post(
        reverse("admin:api_apitoken_add"),
        {"name": "sneaky", "user": root.pk, "scopes": ["sessions:read"]},
    )
    assert ApiToken.objects.get(name="sneaky").user == tess
    mine, _ = create_token(user=api_user, name="other", scopes=["sessions:read"])
    assert client.get(reverse("admin:api_apitoken_change", args=[mine.pk])).status_code == 302


def test_an_admin_edit_never_widens_a_limited_token(admin_client_: Client, api_user: Any) -> None:
    session = WaSession.objects.create(name="only")
    token, _ = create_token(
        user=api_user, name="narrow", scopes=["sessions:read"], sessions=[session]
    )
    session.delete()  # its only session gone: the token sees nothing, not everything
    response = admin_client_.post(
        reverse("admin:api_apitoken_change", args=[token.pk]),
        {"name": "narrow", "user": api_user.pk, "scopes": ["sessions:read"]},
    )
    assert response.status_code == 302  # saved
    token.refresh_from_db()
    assert token.all_sessions is False
