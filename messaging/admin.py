"""Django admin: messages, read-only (the owner writes them; the API queues them).

Search is by id only (``ref`` or WhatsApp's id, exact): message texts are not
searched.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from messaging.models import Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "ref",
        "session",
        "direction",
        "status",
        "kind",
        "chat",
        "failure_reason",
        "created_at",
        "status_changed_at",
    ]
    list_filter = ["direction", "status", "kind", "session"]
    search_fields = ["=ref", "=wa_id"]
    list_select_related = ["session"]
    show_full_result_count = False  # no COUNT(*) over a big table on every page
    readonly_fields = [f.name for f in Message._meta.fields]
    fieldsets = [
        (None, {"fields": ["session", "direction", "status", "ref", "wa_id", "kind", "text"]}),
        ("Who", {"fields": ["chat", "to", "sender", "sender_phone", "from_me", "push_name"]}),
        (
            "What happened",
            {
                "fields": [
                    "failure_reason",
                    "failure_detail",
                    "deadline",
                    "send_epoch",
                    "actor",
                    "created_at",
                    "sending_at",
                    "wa_timestamp",
                    "sent_at",
                    "delivered_at",
                    "read_at",
                    "status_changed_at",
                    "version",
                ]
            },
        ),
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
