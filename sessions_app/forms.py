"""Forms: validation with messages an admin can act on."""

from __future__ import annotations

from django import forms

from sessions_app.models import WaSession


class SessionCreateForm(forms.ModelForm):
    class Meta:
        model = WaSession
        fields = ["name"]
        widgets = {
            "name": forms.TextInput(
                attrs={"autofocus": True, "autocomplete": "off", "placeholder": "sales-team"}
            )
        }
        error_messages = {
            "name": {"unique": "A session with this name already exists."},
        }

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if WaSession.objects.filter(name__iexact=name).exists():
            raise forms.ValidationError("A session with this name already exists.")
        return name
