"""Session names: one validator for every entry point, uniqueness in any case by the database.

Runs on SQLite and, through ``make test``'s second pass, on PostgreSQL.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse

from sessions_app import intents
from sessions_app.forms import SessionCreateForm
from sessions_app.models import PhoneAction, WaSession
from sessions_app.names import TAKEN_MESSAGE, validate_session_name

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("name", ["11", "007", "1234567890"])
def test_all_digit_names_are_refused_by_the_validator(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_session_name(name)
    assert caught.value.code == "all_digits"


@pytest.mark.parametrize("name", ["11a", "a11", "1.1", "sales", "x" * 64])
def test_names_with_a_non_digit_pass_the_validator(name: str) -> None:
    validate_session_name(name)


def test_the_page_form_refuses_all_digit_names() -> None:
    form = SessionCreateForm(data={"name": "11"})
    assert not form.is_valid()
    assert "digits only" in form.errors["name"][0]


def test_model_validation_reports_a_name_taken_in_another_case_on_the_field() -> None:
    WaSession.objects.create(name="ABC")
    with pytest.raises(ValidationError) as caught:
        WaSession(name="abc").full_clean()
    assert caught.value.message_dict == {"name": [TAKEN_MESSAGE]}


def test_the_database_refuses_a_name_taken_in_another_case() -> None:
    """The constraint holds for writers that skip validation (intents, scripts, the shell)."""
    WaSession.objects.create(name="ABC")
    with pytest.raises(IntegrityError), transaction.atomic():
        WaSession.objects.create(name="abc")
    with pytest.raises(intents.IntentRefused, match="already exists"):
        intents.create_session("Abc", "ada")  # the constraint's refusal, as a refusal
    assert list(WaSession.objects.values_list("name", flat=True)) == ["ABC"]


def test_a_session_may_change_the_case_of_its_own_name() -> None:
    session = WaSession.objects.create(name="abc")
    session.name = "ABC"
    session.full_clean()
    session.save()


@pytest.fixture
def superuser_client(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser("root", "", "correct horse battery")
    client.force_login(user)
    return client


def test_the_admin_add_form_refuses_a_name_taken_in_another_case(superuser_client: Client) -> None:
    WaSession.objects.create(name="ABC")
    response = superuser_client.post(
        reverse("admin:sessions_app_wasession_add"), {"name": "abc"}, follow=True
    )
    assert response.status_code == 200
    assert TAKEN_MESSAGE in response.content.decode()
    assert WaSession.objects.count() == 1


def test_the_admin_add_form_refuses_all_digit_names(superuser_client: Client) -> None:
    response = superuser_client.post(reverse("admin:sessions_app_wasession_add"), {"name": "11"})
    assert response.status_code == 200
    assert "digits only" in response.content.decode()
    assert not WaSession.objects.exists()


def test_the_admin_change_form_refuses_a_rename_onto_another_case(
    superuser_client: Client,
) -> None:
    WaSession.objects.create(name="ABC")
    other = WaSession.objects.create(name="other")
    url = reverse("admin:sessions_app_wasession_change", args=[other.pk])
    response = superuser_client.post(url, {"name": "abc"})
    assert response.status_code == 200
    assert TAKEN_MESSAGE in response.content.decode()
    other.refresh_from_db()
    assert other.name == "other"


def test_the_create_page_refuses_a_name_taken_in_another_case(superuser_client: Client) -> None:
    WaSession.objects.create(name="ABC")
    response = superuser_client.post(
        reverse("sessions:create"), {"name": "abc"}, headers={"accept": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["errors"] == {"name": [TAKEN_MESSAGE]}


def test_simulate_phone_reads_its_argument_as_a_name_and_ids_only_with_id() -> None:
    decoy = WaSession.objects.create(name="decoy")
    # A legacy all-digit name (made before the rule) whose text is another session's id.
    legacy = WaSession.objects.create(name=str(decoy.pk))
    out = StringIO()
    call_command("simulate_phone", "scan", str(decoy.pk), stdout=out)
    assert PhoneAction.objects.get().session_id == legacy.pk
    call_command("simulate_phone", "scan", "--id", str(decoy.pk), stdout=out)
    assert PhoneAction.objects.filter(session=decoy).count() == 1


def test_simulate_phone_points_to_id_for_an_unknown_number() -> None:
    session = WaSession.objects.create(name="sales")
    with pytest.raises(CommandError, match="--id"):
        call_command("simulate_phone", "scan", str(session.pk + 100))
    with pytest.raises(CommandError, match="not both"):
        call_command("simulate_phone", "scan", "sales", "--id", str(session.pk))
