"""Every page answers with a Content-Security-Policy that allows only its own scripts and
styles, and a Permissions-Policy; the templates carry nothing that such a CSP blocks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from sessions_app.models import WaSession

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def _directives(header: str) -> dict[str, list[str]]:
    parts = (p.strip().split() for p in header.split(";") if p.strip())
    return {p[0]: p[1:] for p in parts}


@pytest.mark.parametrize("page", ["login", "sessions:list", "sessions:create", "admin:index"])
def test_pages_send_a_strict_csp_and_a_permissions_policy(admin_client: Client, page: str) -> None:
    response = admin_client.get(reverse(page))
    assert response.status_code == 200
    csp = _directives(response.headers["Content-Security-Policy"])
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    policy = response.headers["Permissions-Policy"]
    assert "camera=()" in policy
    assert "geolocation=()" in policy
    assert "microphone=()" in policy


def test_the_detail_page_and_the_admin_change_page_too(admin_client: Any) -> None:
    session = WaSession.objects.create(name="sales")
    for url in [
        reverse("sessions:detail", args=[session.pk]),
        reverse("admin:sessions_app_wasession_changelist"),
    ]:
        response = admin_client.get(url)
        assert response.status_code == 200
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        body = response.content.decode()
        assert " style=" not in body, url  # blocked by style-src 'self'


@pytest.mark.parametrize("path", sorted((ROOT / "templates").rglob("*.html")), ids=str)
def test_templates_have_no_inline_script_style_or_handler(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), "inline <script>"
    assert "<style" not in text
    assert not re.search(r"\sstyle=", text)
    assert not re.search(r"\son[a-z]+=", text), "inline event handler"
    assert "javascript:" not in text
