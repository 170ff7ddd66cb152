"""A staff user makes an API token in the browser, copies it, and the API accepts it."""

from __future__ import annotations

import uuid

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e


def test_a_token_made_on_the_page_is_copied_and_works_then_is_revoked(
    browser: Browser, live_server_url: str
) -> None:
    context = browser.new_context(base_url=live_server_url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        log_in(page)
        page.click("nav.mainnav >> text=API tokens")
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        page.fill("#id_name", name)
        page.check("input[name=scopes][value='sessions:read']")
        page.click("#create-token")
        expect(page.locator("#new-token")).to_be_visible()
        page.click("#copy-token")
        expect(page.locator("#copy-token")).to_have_text("Copied")
        token = page.evaluate("navigator.clipboard.readText()")
        assert token == page.input_value("#new-token-text")
        assert token.startswith("wac_")
        with httpx.Client(
            base_url=f"{live_server_url}/api/v1", headers={"Authorization": f"Bearer {token}"}
        ) as api:
            assert api.get("/sessions").status_code == 200
            refused = api.post("/sessions", json={"name": name}).json()
            assert refused["code"] == "insufficient_scope"
        page.goto("/tokens/")
        assert token not in page.content()  # shown once
        page.locator(f"#tokens tr:has-text('{name}') button", has_text="Revoke").click()
        expect(page.locator("#tokens tr", has_text=name)).to_contain_text("revoked")
        revoked = httpx.get(
            f"{live_server_url}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}
        )
        assert revoked.json()["code"] == "token_revoked"
        assert errors == []
    finally:
        context.close()
