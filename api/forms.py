"""The token form of the token page (name, scopes, sessions, expiry)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.utils import timezone

from api.scopes import SCOPES, VIEW
from sessions_app.models import WaSession

EXPIRY_CHOICES = [("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("", "Never")]


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="What uses it, e.g. crm-prod; the event log shows token:<name>.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": "crm-prod"}),
    )
    scopes = forms.MultipleChoiceField(
        choices=[(s, f"{s} — {label}") for s, label in SCOPES.items()],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one scope."},
    )
    sessions = forms.ModelMultipleChoiceField(
        queryset=WaSession.objects.all(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every session.",
    )
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="90", required=False)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not user.has_perm(VIEW):  # no session names for those who may not see them
            self.fields["sessions"].queryset = WaSession.objects.none()

    def expires_at(self) -> dt.datetime | None:
        days = self.cleaned_data.get("expires_in")
        return timezone.now() + dt.timedelta(days=int(days)) if days else None
