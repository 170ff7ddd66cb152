"""Session names: clear errors for every bad input."""

from __future__ import annotations

import pytest

from sessions_app.forms import SessionCreateForm
from sessions_app.models import WaSession

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("name", ["sales", "ops-2", "team_a.b", "A1", "x" * 64])
def test_valid_names(name: str) -> None:
    form = SessionCreateForm(data={"name": name})
    assert form.is_valid(), form.errors


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "This field is required."),
        ("a", "Ensure this value has at least 2 characters (it has 1)."),
        ("x" * 65, "Ensure this value has at most 64 characters (it has 65)."),
        ("has space", "Use letters, digits, dots, dashes and underscores"),
        ("-leading", "Use letters, digits, dots, dashes and underscores"),
        ("emoji😀", "Use letters, digits, dots, dashes and underscores"),
        ("<script>", "Use letters, digits, dots, dashes and underscores"),
        ("tab\there", "Use letters, digits, dots, dashes and underscores"),
    ],
)
def test_invalid_names_say_why(name: str, error: str) -> None:
    form = SessionCreateForm(data={"name": name})
    assert not form.is_valid()
    assert any(error in message for message in form.errors["name"]), form.errors


def test_duplicate_names_are_rejected_case_insensitively() -> None:
    WaSession.objects.create(name="Sales")
    form = SessionCreateForm(data={"name": "sales"})
    assert not form.is_valid()
    assert form.errors["name"] == ["A session with this name already exists."]
