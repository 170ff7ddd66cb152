"""Concurrent creates: one session, never a 5xx (SQLite here, PostgreSQL in the second pass)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from sessions_app.models import WaSession
from tests.api.conftest import ApiClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def race(client: ApiClient, bodies: list[tuple[dict[str, Any], dict[str, str]]]) -> list[Any]:
    """Send the requests from threads released together; their answers in order."""
    barrier = threading.Barrier(len(bodies))
    answers: list[Any] = [None] * len(bodies)

    def send(i: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        try:
            barrier.wait()
            answers[i] = client.post("/sessions", body, **headers)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=send, args=(i, body, headers))
        for i, (body, headers) in enumerate(bodies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.parametrize("attempt", range(3))
def test_the_same_idempotency_key_at_once_creates_one_session(api: ApiClient, attempt: int) -> None:
    request = ({"name": f"race-{attempt}"}, {"Idempotency-Key": f"k-{attempt}"})
    answers = race(api, [request] * 4)
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {201, 409}, [a.content for a in answers]
    assert 201 in statuses
    created = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(created) == 1
    assert WaSession.objects.count() == 1
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["code"] in ("idempotency_in_progress", "name_taken")


def test_the_same_name_at_once_without_a_key_creates_one_session(api: ApiClient) -> None:
    answers = race(api, [({"name": "same"}, {})] * 4)
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"name_taken"}
    assert WaSession.objects.count() == 1
