"""The token page: a staff user creates, lists and revokes their own API tokens.

A new token's text is rendered once in the answer to the POST that created it
(no redirect, no message storage, ``Cache-Control: no-store``), so it is never
stored anywhere but in the user's hands.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.views import View

from api.forms import TokenForm
from api.issuing import create_token
from api.models import ApiToken
from sessions_app.views import OperatorRequiredMixin

TEMPLATE = "api/tokens.html"


class TokenPageView(OperatorRequiredMixin, View):
    permission_required = ()  # any active staff user: a token never exceeds its user's rights

    def _render(self, request: HttpRequest, form: TokenForm, **extra: Any) -> HttpResponse:
        tokens = ApiToken.objects.filter(user=request.user).prefetch_related("sessions")
        response = render(request, TEMPLATE, {"form": form, "tokens": tokens, **extra})
        add_never_cache_headers(response)
        return response

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._render(request, TokenForm(user=request.user))

    def post(self, request: HttpRequest) -> HttpResponse:
        form = TokenForm(request.POST, user=request.user)
        if not form.is_valid():
            return self._render(request, form)
        token, text = create_token(
            user=request.user,
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            sessions=form.cleaned_data["sessions"],
            expires_at=form.expires_at(),
        )
        return self._render(
            request, TokenForm(user=request.user), new_token=token, new_token_text=text
        )


class RevokeTokenView(OperatorRequiredMixin, View):
    permission_required = ()

    http_method_names = ["post"]

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        token = get_object_or_404(ApiToken, pk=pk, user=request.user)
        token.revoke()
        messages.success(request, f"Token {token.name!r} revoked.")
        return redirect("api:tokens")
