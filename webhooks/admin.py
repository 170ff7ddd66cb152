"""Django admin for webhooks: endpoints (secret shown once), events, deliveries.

Actions: send a test event, rotate the secret, enable (resume), redeliver
(selected deliveries, or every dead one of an endpoint since a time). A secret
is shown in the answer to the POST that made it, never stored in a message,
never a form field.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from webhooks import endpoints
from webhooks.models import Delivery, Endpoint, Event


class EndpointForm(forms.ModelForm):
    url = forms.URLField(label="URL", max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=[(t, t) for t in endpoints.SUBSCRIBABLE],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every type except session.qr (which is opt-in).",
    )

    class Meta:
        model = Endpoint
        fields = ["url", "description", "event_types", "all_sessions", "sessions", "enabled"]

    def clean(self) -> dict[str, Any]:
        """Some sessions, or all: an endpoint of no session would hear nothing (the API
        refuses an empty ``session_ids`` too)."""
        data = super().clean()
        if not data.get("all_sessions") and not data.get("sessions"):
            self.add_error("sessions", "Choose the sessions to hear about, or tick all sessions.")
        return data


def _secret_page(
    request: HttpRequest, admin_: admin.ModelAdmin, endpoint: Endpoint, title: str
) -> HttpResponse:
    context = {
        **admin_.admin_site.each_context(request),
        "opts": admin_.opts,
        "endpoint": endpoint,
        "secret": endpoint.secret,
        "title": title,
    }
    response = TemplateResponse(request, "webhooks/admin_secret.html", context)
    add_never_cache_headers(response)
    return response


class RedeliverSinceForm(forms.Form):
    since = forms.DateTimeField(
        help_text="Dead deliveries created at or after this time (e.g. 2026-11-30 12:00)."
    )


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ["__str__", "url", "enabled", "disabled_reason", "types", "failing_since"]
    list_filter = ["enabled"]
    search_fields = ["url", "description"]
    readonly_fields = ["failing_since", "created_at", "created_by", "secret_rotation"]
    filter_horizontal = ["sessions"]
    actions = ["send_test", "rotate_secret", "enable", "redeliver_dead"]

    @admin.display(description="event types")
    def types(self, obj: Endpoint) -> str:
        return ", ".join(obj.event_types) or "all (not session.qr)"

    @admin.display(description="secret")
    def secret_rotation(self, obj: Endpoint) -> str:
        if obj.previous_secret_expires_at and obj.previous_secret_expires_at > timezone.now():
            until = obj.previous_secret_expires_at
            return f"rotated; the old secret also signs until {until:%Y-%m-%d %H:%M} UTC"
        return "shown once when made; use the action 'Rotate the secret' for a new one"

    def save_model(self, request: HttpRequest, obj: Endpoint, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = f"user:{request.user.pk}"
            request._new_endpoint_secret = True  # type: ignore[attr-defined]
        elif "enabled" in form.changed_data and obj.enabled:
            obj.disabled_reason = ""
            obj.failing_since = None
        elif "enabled" in form.changed_data and not obj.disabled_reason:
            obj.disabled_reason = "disabled by an operator"  # as the API says it
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if form.instance.enabled:
            from webhooks import ring

            ring.ring_dispatchers()

    def response_add(self, request: HttpRequest, obj: Endpoint, *args: Any) -> HttpResponse:
        if not getattr(request, "_new_endpoint_secret", False):
            return super().response_add(request, obj, *args)
        return _secret_page(request, self, obj, "Webhook endpoint created")

    @admin.action(description="Send a test event", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        for endpoint in queryset:
            endpoints.send_test(endpoint)
        self.message_user(request, f"Test event queued for {queryset.count()} endpoint(s).")

    @admin.action(
        description="Rotate the secret (the old one signs during the overlap)",
        permissions=["change"],
    )
    def rotate_secret(
        self, request: HttpRequest, queryset: QuerySet[Endpoint]
    ) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Rotate one endpoint at a time.", messages.WARNING)
            return None
        endpoint = queryset.get()
        endpoints.rotate(endpoint)
        return _secret_page(request, self, endpoint, "Webhook secret rotated")

    @admin.action(description="Enable (resume deliveries)", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        for endpoint in queryset:
            endpoints.set_enabled(endpoint, True)
        self.message_user(request, f"Enabled {queryset.count()} endpoint(s).")

    @admin.action(description="Redeliver dead deliveries since a time", permissions=["change"])
    def redeliver_dead(
        self, request: HttpRequest, queryset: QuerySet[Endpoint]
    ) -> HttpResponse | None:
        if "since" in request.POST:
            form = RedeliverSinceForm(request.POST)
            if form.is_valid():
                since: dt.datetime = form.cleaned_data["since"]
                count = sum(endpoints.redeliver_dead(e, since) for e in queryset)
                self.message_user(request, f"{count} dead deliveries will be sent again.")
                return None
        else:
            form = RedeliverSinceForm(initial={"since": timezone.now() - dt.timedelta(days=1)})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "form": form,
            "queryset": queryset,
            "action": "redeliver_dead",
            "title": "Redeliver dead deliveries",
        }
        return TemplateResponse(request, "webhooks/admin_redeliver.html", context)


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "type", "session_id", "session_name", "seq", "created_at"]
    list_filter = ["type", "created_at"]
    search_fields = ["id", "session_name"]
    readonly_fields = ["id", "type", "session_id", "session_name", "seq", "created_at"]
    exclude = ["payload"]  # it may carry a QR code or a message text

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "event_type",
        "endpoint",
        "session_id",
        "seq",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
    ]
    list_filter = ["status", "endpoint", "event__type", "last_status_code"]
    search_fields = ["event__id"]
    list_select_related = ["event", "endpoint"]
    readonly_fields = [
        "event",
        "endpoint",
        "session_id",
        "seq",
        "status",
        "attempts",
        "next_attempt_at",
        "claim_owner",
        "claim_expires_at",
        "last_attempt_at",
        "last_status_code",
        "last_error",
        "last_response",
        "delivered_at",
        "created_at",
    ]
    actions = ["redeliver"]

    @admin.display(description="type", ordering="event__type")
    def event_type(self, obj: Delivery) -> str:
        return obj.event.type

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Redeliver selected deliveries", permissions=["change"])
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        count = endpoints.redeliver(list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{count} deliveries will be sent again (none in flight).")
