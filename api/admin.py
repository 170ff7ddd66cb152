"""Django admin for API tokens: create (the text shown once), list, revoke.

Adding a token renders its text in the answer to the add form's POST, not in a
message (messages are stored in the session or a cookie); it is never stored.
The secret hash and prefix are never editable.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from api.models import ApiToken
from api.scopes import SCOPES


class ApiTokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiToken
        fields = ["name", "user", "scopes", "sessions", "expires_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = [
        "name",
        "token_prefix",
        "user",
        "scope_labels",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["prefix", "last_used_at", "revoked_at", "created_at"]
    filter_horizontal = ["sessions"]
    actions = ["revoke_tokens"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        """Superusers see every token; anyone else only their own."""
        tokens = super().get_queryset(request)
        return tokens if request.user.is_superuser else tokens.filter(user=request.user)

    def get_exclude(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        # Only a superuser issues tokens for someone else: a token shows its text to
        # whoever creates it, and would act with its user's permissions.
        return [] if request.user.is_superuser else ["user"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "user"] if obj is not None and request.user.is_superuser else fields

    @admin.display(description="token")
    def token_prefix(self, obj: ApiToken) -> str:
        return f"wac_{obj.prefix}_…"

    @admin.display(description="scopes")
    def scope_labels(self, obj: ApiToken) -> str:
        return obj.scope_labels()

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if not change:
            if not request.user.is_superuser:
                obj.user = request.user  # type: ignore[assignment]
            fresh, text = ApiToken.issue()
            obj.prefix, obj.secret_hash = fresh.prefix, fresh.secret_hash
            request._new_api_token = text  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        token = form.instance
        limited = token.sessions.exists()
        # A new token without sessions may use all; an edit may narrow a token, never
        # widen one whose sessions were all unticked or deleted to every session.
        all_sessions = not limited if not change else token.all_sessions and not limited
        if token.all_sessions != all_sessions:
            token.all_sessions = all_sessions
            ApiToken.objects.filter(pk=token.pk).update(all_sessions=all_sessions)

    def response_add(self, request: HttpRequest, obj: ApiToken, *args: Any) -> HttpResponse:
        text = getattr(request, "_new_api_token", None)
        if text is None:
            return super().response_add(request, obj, *args)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "token": obj,
            "token_text": text,
            "title": "API token created",
        }
        response = TemplateResponse(request, "api/admin_token_created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            token.revoke()
        self.message_user(request, f"Revoked {queryset.count()} token(s).")
