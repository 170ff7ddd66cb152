"""The API docs: offline (ninja's own static files), for staff and token holders only."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db


def test_staff_get_swagger_ui_from_the_apps_own_static_files(client: Client, api_user: Any) -> None:
    client.force_login(api_user)
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower() and "https://" not in html
    for asset in ("ninja/swagger-ui-bundle.js", "ninja/swagger-ui-init.js", "ninja/swagger-ui.css"):
        assert finders.find(asset), asset
    schema = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/sessions/{session_id}/qr" in schema["paths"]


def test_the_schema_documents_problem_answers(api: ApiClient) -> None:
    schema = api.get("/openapi.json").json()
    create = schema["paths"]["/api/v1/sessions"]["post"]
    for status in ("401", "403", "409", "422", "429"):
        assert "application/problem+json" in create["responses"][status]["content"]
    qr = schema["paths"]["/api/v1/sessions/{session_id}/qr"]["get"]["responses"]["200"]
    assert set(qr["content"]) == {"application/json", "image/svg+xml", "image/png"}


def test_docs_and_schema_need_staff_or_a_token(client: Client, plain_user: Any) -> None:
    assert client.get("/api/v1/docs").status_code == 302
    assert client.get("/api/v1/openapi.json").status_code == 401
    bad = client.get("/api/v1/openapi.json", headers={"Authorization": "Bearer wac_nope"})
    assert bad.json()["code"] == "token_invalid"
    client.force_login(plain_user)
    assert client.get("/api/v1/docs").status_code == 403
    assert client.get("/api/v1/openapi.json").status_code == 401


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/sessions", "/api/v1/sessions/1/nope"])
def test_unknown_api_paths_are_problems_too(api: ApiClient, path: str) -> None:
    response = api.client.get(path, headers=api.headers)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
