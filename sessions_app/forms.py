"""Forms: validation with messages an admin can act on."""

from __future__ import annotations

import re

from django import forms
from django.core.validators import RegexValidator

from sessions_app.models import WaSession


class SessionCreateForm(forms.ModelForm):
    """A new session's name. The rules are the model's (``sessions_app.names`` and the
    case-insensitive unique constraint), shared with the admin and the API."""

    class Meta:
        model = WaSession
        fields = ["name"]
        widgets = {
            "name": forms.TextInput(
                attrs={"autofocus": True, "autocomplete": "off", "placeholder": "sales-team"}
            )
        }


class PhoneNumberField(forms.CharField):
    """A phone number; spaces, dashes, dots, slashes and brackets are dropped."""

    def to_python(self, value: object) -> str:
        return re.sub(r"[\s\-()./]", "", super().to_python(value))


class PairPhoneForm(forms.Form):
    """A phone number in international format, for linking with a pairing code."""

    phone = PhoneNumberField(
        max_length=24,
        validators=[
            RegexValidator(
                r"^\+[1-9]\d{6,14}\Z",
                "Enter the number in international format: + and the country code, "
                "e.g. +49 151 12345678.",
            )
        ],
        error_messages={"required": "Enter the phone number of the WhatsApp account to link."},
    )


#: WhatsApp's longest text, in characters (the drivers refuse longer ones).
MAX_MESSAGE_TEXT = 65536


class PeerMessageForm(forms.Form):
    """A message from a peer's phone to a session (the simulated phone panel)."""

    sender = PhoneNumberField(
        label="From",
        max_length=24,
        validators=[
            RegexValidator(
                r"^\+?[1-9]\d{6,14}\Z",
                "Enter the peer's number with its country code, e.g. +49 176 12345678.",
            )
        ],
        error_messages={"required": "Enter the number the message comes from."},
    )
    text = forms.CharField(
        max_length=MAX_MESSAGE_TEXT,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "Enter the message."},
    )
    push_name = forms.CharField(label="Name", max_length=64, required=False)

    def clean_text(self) -> str:
        text: str = self.cleaned_data["text"]
        if not text.strip():
            raise forms.ValidationError("Enter the message.")
        return text
