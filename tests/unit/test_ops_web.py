"""The web tier's /metrics (allow-list and token hook), /healthz, /readyz, and the
database gauges it serves."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from ops import health
from sessions_app import intents
from sessions_app.models import SessionEvent, SupervisorPresence, WaSession

pytestmark = pytest.mark.django_db

GOOD_TOKEN = "wac_test_0123456789abcdef"


def verify(token: str, scope: str) -> bool:
    """A stand-in for the API app's token check (WACONNECT_METRICS_TOKEN_VERIFIER)."""
    return token == GOOD_TOKEN and scope == "metrics:read"


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(client: Client, **headers: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    return samples(response.content)


# -- who may read /metrics -----------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_metrics_answer_loopback_by_default(client: Client, address: str) -> None:
    response = client.get("/metrics", REMOTE_ADDR=address)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"waconnect_sessions{" in response.content


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.7", "2001:db8::1", "", "garbage"])
def test_metrics_refuse_other_addresses_by_default(client: Client, address: str) -> None:
    response = client.get("/metrics", REMOTE_ADDR=address)
    assert response.status_code == 403
    assert b"waconnect_" not in response.content


def test_the_allow_list_is_a_setting_of_cidrs(client: Client, settings: Any) -> None:
    settings.WACONNECT_METRICS_ALLOW = ["10.0.0.0/8", "2001:db8::/32"]
    assert client.get("/metrics", REMOTE_ADDR="10.200.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="2001:db8::42").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="11.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_a_bearer_token_without_a_verifier_is_refused_even_from_loopback(client: Client) -> None:
    response = client.get(
        "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {GOOD_TOKEN}"
    )
    assert response.status_code == 401
    assert 'scope="metrics:read"' in response["WWW-Authenticate"]


def test_a_token_with_metrics_read_passes_the_hook_from_anywhere(
    client: Client, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.WACONNECT_METRICS_TOKEN_VERIFIER = "tests.unit.test_ops_web.verify"
    caplog.set_level(logging.DEBUG)
    ok = client.get("/metrics", REMOTE_ADDR="10.9.9.9", HTTP_AUTHORIZATION=f"Bearer {GOOD_TOKEN}")
    assert ok.status_code == 200
    bad = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer nope")
    assert bad.status_code == 401
    assert GOOD_TOKEN not in caplog.text and "nope" not in caplog.text


def test_metrics_only_answer_get(client: Client) -> None:
    assert client.post("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 405


# -- the database gauges --------------------------------------------------------------


def test_sessions_are_counted_by_state_and_desired_state(client: Client) -> None:
    WaSession.objects.create(name="a", state="connected", jid="1@s.whatsapp.net")
    WaSession.objects.create(name="b", state="connected", jid="2@s.whatsapp.net")
    WaSession.objects.create(name="c", state="error", desired_state="stopped")
    found = scrape(client)
    assert found[("waconnect_sessions", (("state", "connected"),))] == 2
    assert found[("waconnect_sessions", (("state", "error"),))] == 1
    assert found[("waconnect_sessions", (("state", "banned"),))] == 0  # every state, always
    assert found[("waconnect_sessions_desired", (("desired_state", "running"),))] == 2
    assert found[("waconnect_sessions_desired", (("desired_state", "stopped"),))] == 1
    assert found[("waconnect_database_up", ())] == 1


def test_sessions_awaiting_an_owner_are_those_needing_one_without_a_live_lease(
    client: Client,
) -> None:
    soon = timezone.now() + dt.timedelta(seconds=30)
    past = timezone.now() - dt.timedelta(seconds=30)
    WaSession.objects.create(name="free", state="connected", jid="1@s.whatsapp.net")
    WaSession.objects.create(name="expired", jid="2@s.whatsapp.net", lease_owner="x")
    WaSession.objects.filter(name="expired").update(lease_expires_at=past)
    WaSession.objects.create(
        name="held", jid="3@s.whatsapp.net", lease_owner="x", lease_expires_at=soon
    )
    WaSession.objects.create(name="idle", desired_state="stopped")  # needs nobody
    assert scrape(client)[("waconnect_sessions_awaiting_owner", ())] == 2


def test_the_oldest_qr_request_without_a_code_is_timed_from_its_intent(client: Client) -> None:
    assert scrape(client)[("waconnect_qr_request_oldest_age_seconds", ())] == 0
    old = intents.create_session("old", "ada")
    SessionEvent.objects.filter(session=old).update(at=timezone.now() - dt.timedelta(seconds=90))
    intents.create_session("new", "ada")
    shown = intents.create_session("shown", "ada")
    SessionEvent.objects.filter(session=shown).update(at=timezone.now() - dt.timedelta(seconds=500))
    WaSession.objects.filter(pk=shown.pk).update(state="qr_required")  # being served
    age = scrape(client)[("waconnect_qr_request_oldest_age_seconds", ())]
    assert 90 <= age < 120


def test_supervisors_alive_are_those_whose_presence_has_not_expired(client: Client) -> None:
    now = timezone.now()
    for owner, delta in [("a", 10), ("b", 10), ("dead", -1)]:
        SupervisorPresence.objects.create(
            owner=owner, expires_at=now + dt.timedelta(seconds=delta), max_sessions=10
        )
    assert scrape(client)[("waconnect_supervisors_alive", ())] == 2


def test_openmetrics_is_served_when_asked_for(client: Client) -> None:
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    body = response.content.decode()
    assert body.endswith("# EOF\n") and body.count("# EOF") == 1
    assert "waconnect_supervisors_alive" in body


# -- health ---------------------------------------------------------------------------


def test_healthz_answers(client: Client) -> None:
    response = client.get("/healthz", REMOTE_ADDR="10.1.2.3")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_checks_the_database_migrations_and_channel_layer(client: Client) -> None:
    response = client.get("/readyz", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "migrations": "ok", "channel_layer": "ok"},
    }


def test_readyz_fails_when_redis_is_unreachable(client: Client, settings: Any) -> None:
    """A real channels-redis layer pointed at a port nobody listens on."""
    from benchmarks.liveserver import free_port

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["channel_layer"].startswith("failed")


def test_readyz_fails_while_migrations_are_missing(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Executor:
        def __init__(self, connection: Any) -> None:
            self.loader = type("Loader", (), {"graph": type("G", (), {"leaf_nodes": list})()})()

        def migration_plan(self, targets: Any) -> list[str]:
            return ["sessions_app.0003_future"]

    monkeypatch.setattr(health, "_migrated", False)
    monkeypatch.setattr(health, "MigrationExecutor", Executor)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"] == "failed: RuntimeError"
