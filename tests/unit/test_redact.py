"""What the neonize worker's log lines may carry: no QR payload, pairing code or number."""

from __future__ import annotations

import pytest

from sessions_app.drivers.neonize_driver import redact


@pytest.mark.parametrize(
    "line",
    [
        "Successfully paired 4915112345678:12@s.whatsapp.net",  # whatsmeow's pairing line
        "Got message from 4915112345678@s.whatsapp.net",
        "Sender 123456789012345@lid",
        "pairing code ABCD-EF12",
        "QR https://wa.me/settings/linked_devices#2@abcdefghijklmnopqrstuvwxyz0123456789",
    ],
)
def test_secrets_and_numbers_are_redacted(line: str) -> None:
    out = redact(line)
    assert "<redacted>" in out
    for secret in ("4915112345678", "123456789012345", "ABCD-EF12", "abcdefghijklmnop"):
        assert secret not in out


def test_ordinary_lines_pass() -> None:
    assert redact("Connected to WhatsApp") == "Connected to WhatsApp"
