"""Who a message can be sent to: the one set of rules every entry point applies.

Pure (no Django but its ``ValidationError``). A recipient is a phone number in
international form (digits with the country code; ``+``, ``00``, spaces, dots,
dashes and brackets are dropped) or a JID: ``<digits>@s.whatsapp.net`` (a
person; ``@c.us`` is read as that), ``<digits>@lid`` (a person by their LID), or
``<digits>[-<digits>]@g.us`` (a group).
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

USER_SERVER = "s.whatsapp.net"
INVALID_CODE = "invalid_recipient"
#: E.164: at most 15 digits with the country code; 7 is the shortest in use.
MIN_DIGITS, MAX_DIGITS = 7, 15
#: WhatsApp's own limit on a text message's length, in characters.
MAX_TEXT = 65536

_PHONE_NOISE = re.compile(r"[\s().\-]")
_DIGITS = re.compile(r"[1-9][0-9]*")
_GROUP_USER = re.compile(r"[0-9]+(-[0-9]+)?")


def _invalid(message: str) -> ValidationError:
    return ValidationError(message, code=INVALID_CODE)


def phone_digits(value: str) -> str:
    """``"+49 (151) 123-4567"`` → ``"491511234567"``; ValidationError if it is not a
    number in international form."""
    digits = _PHONE_NOISE.sub("", value)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not _DIGITS.fullmatch(digits):
        raise _invalid(
            "Give a phone number in international form with its country code "
            "(e.g. +49 151 1234567), or a WhatsApp JID."
        )
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        raise _invalid(
            f"A phone number has {MIN_DIGITS} to {MAX_DIGITS} digits with its country code."
        )
    return digits


def recipient_jid(value: str) -> str:
    """The JID to send to for ``value`` (a phone number or a JID); ValidationError
    (code ``invalid_recipient``) with a message a person can act on."""
    value = value.strip()
    if not value:
        raise _invalid("Say who to send to: a phone number with its country code, or a JID.")
    if "@" not in value:
        return f"{phone_digits(value)}@{USER_SERVER}"
    user, _, server = value.rpartition("@")
    server = server.lower()
    if server == "c.us":
        server = USER_SERVER
    if server in (USER_SERVER, "lid"):
        if not _DIGITS.fullmatch(user) or len(user) > 32:
            raise _invalid(f"A JID @{server} starts with the account's digits.")
        return f"{user}@{server}"
    if server == "g.us":
        if not _GROUP_USER.fullmatch(user) or len(user) > 64:
            raise _invalid("A group JID is digits (or digits-digits) @g.us.")
        return f"{user}@g.us"
    raise _invalid("A JID ends in @s.whatsapp.net (a person), @lid, or @g.us (a group).")


def validate_text(text: str) -> None:
    """ValidationError unless ``text`` is something to send (not blank, not too long)."""
    if not text or not text.strip():
        raise ValidationError("The message has no text.", code="blank")
    if len(text) > MAX_TEXT:
        raise ValidationError(f"A message has at most {MAX_TEXT} characters.", code="max_length")
