"""Django admin: inspect sessions and their history; act through intents only.

Observed and lease columns are read-only here: an admin form that saved the whole
row would overwrite the supervisor's observation with a stale copy.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from sessions_app import intents, snapshots
from sessions_app.models import SessionEvent, SupervisorPresence, WaSession


class SessionEventInline(admin.TabularInline):
    model = SessionEvent
    fields = ["at", "kind", "from_state", "to_state", "message", "actor"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-at", "-id"]
    max_num = 0
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WaSession)
class WaSessionAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "state_badge",
        "desired_state",
        "phone",
        "push_name",
        "lease_owner",
        "state_changed_at",
    ]
    list_filter = ["state", "desired_state"]
    search_fields = ["name", "jid", "push_name"]
    inlines = [SessionEventInline]
    actions = ["start_sessions", "stop_sessions", "logout_sessions"]
    fields = [
        "name",
        "desired_state",
        "state",
        "state_changed_at",
        "jid",
        "push_name",
        "last_error",
        "retry_count",
        "next_retry_at",
        "banned_until",
        "qr_expires_at",
        "lease_owner",
        "lease_expires_at",
        "lease_epoch",
        "pair_request",
        "pair_served",
        "connect_request",
        "connect_served",
        "created_at",
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: WaSession | None = None) -> list[str]:
        editable = {"name"}
        return [f for f in self.fields if f not in editable]

    class Media:
        # Colours in a stylesheet, not style="" attributes: the CSP allows no inline styles.
        css = {"all": ["waconnect/admin.css"]}

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: WaSession) -> str:
        return format_html(
            '<span class="wa-state wa-state-{}">{}</span>',
            obj.state,
            snapshots.STATE_LABELS.get(obj.state, obj.state),
        )

    @admin.display(description="phone")
    def phone(self, obj: WaSession) -> str:
        return snapshots.phone_number(obj.jid) if obj.jid else ""

    def save_model(self, request: HttpRequest, obj: WaSession, form: Any, change: bool) -> None:
        if change:
            obj.save(update_fields=["name"])
        else:
            created = intents.create_session(obj.name, request.user.get_username())
            obj.pk = created.pk

    def delete_model(self, request: HttpRequest, obj: WaSession) -> None:
        intents.delete(obj, request.user.get_username())

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WaSession]) -> None:
        for obj in queryset:
            intents.delete(obj, request.user.get_username())

    def _each(
        self, request: HttpRequest, queryset: QuerySet[WaSession], func: Any, verb: str
    ) -> None:
        done = 0
        for obj in queryset:
            try:
                func(obj, request.user.get_username())
                done += 1
            except intents.IntentRefused as refused:
                self.message_user(request, f"{obj.name}: {refused.message}", messages.WARNING)
        self.message_user(request, f"{verb} requested for {done} session(s).")

    @admin.action(description="Start selected sessions", permissions=["change"])
    def start_sessions(self, request: HttpRequest, queryset: QuerySet[WaSession]) -> None:
        self._each(request, queryset, intents.start, "Start")

    @admin.action(description="Stop selected sessions", permissions=["change"])
    def stop_sessions(self, request: HttpRequest, queryset: QuerySet[WaSession]) -> None:
        self._each(request, queryset, intents.stop, "Stop")

    @admin.action(description="Log out selected sessions", permissions=["change"])
    def logout_sessions(self, request: HttpRequest, queryset: QuerySet[WaSession]) -> None:
        self._each(request, queryset, intents.logout, "Log out")


@admin.register(SessionEvent)
class SessionEventAdmin(admin.ModelAdmin):
    list_display = ["at", "session", "kind", "from_state", "to_state", "message", "actor"]
    list_filter = ["kind", "to_state"]
    search_fields = ["session__name", "message", "actor"]
    list_select_related = ["session"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SupervisorPresence)
class SupervisorPresenceAdmin(admin.ModelAdmin):
    """Who is running: each supervisor renews its row with its leases."""

    list_display = ["owner", "sessions", "max_sessions", "started_at", "expires_at", "alive"]
    readonly_fields = ["owner", "sessions", "max_sessions", "started_at", "expires_at"]

    @admin.display(boolean=True)
    def alive(self, obj: SupervisorPresence) -> bool:
        return obj.expires_at > timezone.now()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
