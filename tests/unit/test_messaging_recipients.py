"""Who a message can be sent to, and what text can be sent."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from messaging.recipients import MAX_TEXT, recipient_jid, validate_text


@pytest.mark.parametrize(
    ("given", "jid"),
    [
        ("+49 151 1234567", "491511234567@s.whatsapp.net"),
        ("0049 (151) 123-45.67", "491511234567@s.whatsapp.net"),
        ("491511234567", "491511234567@s.whatsapp.net"),
        (" 491511234567@s.whatsapp.net ", "491511234567@s.whatsapp.net"),
        ("491511234567@c.us", "491511234567@s.whatsapp.net"),
        ("491511234567@S.WhatsApp.Net", "491511234567@s.whatsapp.net"),
        ("123456789012345@lid", "123456789012345@lid"),
        ("120363041234567890@g.us", "120363041234567890@g.us"),
        ("491511234567-1600000000@g.us", "491511234567-1600000000@g.us"),
    ],
)
def test_numbers_and_jids_become_the_jid_to_send_to(given: str, jid: str) -> None:
    assert recipient_jid(given) == jid


@pytest.mark.parametrize(
    "given",
    [
        "",
        "   ",
        "0151 1234567",  # no country code
        "+49 151 abc",
        "12345",  # too short
        "+1234567890123456",  # 16 digits
        "alice@s.whatsapp.net",
        "491511234567@example.com",
        "status@broadcast",
        "491511234567:3@s.whatsapp.net",  # a device, not a chat
        "@g.us",
    ],
)
def test_anything_else_is_refused_as_an_invalid_recipient(given: str) -> None:
    with pytest.raises(ValidationError) as caught:
        recipient_jid(given)
    assert caught.value.code == "invalid_recipient"


def test_text_must_be_there_and_not_too_long() -> None:
    validate_text("hi")
    validate_text("x" * MAX_TEXT)
    for bad in ("", "  \n"):
        with pytest.raises(ValidationError):
            validate_text(bad)
    with pytest.raises(ValidationError):
        validate_text("x" * (MAX_TEXT + 1))
