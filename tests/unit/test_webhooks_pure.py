"""Webhooks' pure parts: the retry schedule, the SSRF rules, signing, type filters."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from webhooks import retry, signing, ssrf
from webhooks.conf import DEFAULT_SCHEDULE, WebhookConfig, webhook_config
from webhooks.models import new_secret, wants

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)

# -- the schedule -------------------------------------------------------------------------


def test_default_schedule_is_at_once_then_5s_5min_30min_2h_5h_10h_10h() -> None:
    assert DEFAULT_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def test_each_failed_attempt_waits_the_next_step_and_the_last_one_is_dead() -> None:
    schedule = DEFAULT_SCHEDULE
    waits = []
    for attempts in range(1, len(schedule) + 1):
        v = retry.verdict(retry.Outcome.FAILED, attempts, schedule, NOW)
        waits.append(None if v.next_attempt_at is None else (v.next_attempt_at - NOW).seconds)
        assert v.status == ("dead" if attempts == len(schedule) else "pending")
    assert waits == [5, 300, 1800, 7200, 18000, 36000, 36000, None]


def test_outcomes_2xx_delivered_410_gone_everything_else_failed() -> None:
    assert retry.classify(200) is retry.Outcome.DELIVERED
    assert retry.classify(204) is retry.Outcome.DELIVERED
    assert retry.classify(410) is retry.Outcome.GONE
    for code in (None, 199, 301, 302, 400, 404, 429, 500, 503):
        assert retry.classify(code) is retry.Outcome.FAILED
    assert retry.verdict(retry.Outcome.DELIVERED, 3, (0,), NOW).status == "delivered"
    # 410 is never dead: it waits, paused, for its endpoint to be enabled again.
    assert retry.verdict(retry.Outcome.GONE, 1, (0,), NOW) == retry.Verdict("pending", NOW)


def test_an_endpoint_is_disabled_only_after_failing_for_the_whole_time() -> None:
    assert not retry.should_disable(None, NOW, 60)
    assert not retry.should_disable(NOW - dt.timedelta(seconds=59), NOW, 60)
    assert retry.should_disable(NOW - dt.timedelta(seconds=60), NOW, 60)


def test_the_schedule_and_the_other_times_are_settable(settings: Any) -> None:
    settings.WACONNECT_WEBHOOKS_SCHEDULE = [0, 1, 60]
    settings.WACONNECT_WEBHOOKS_DISABLE_AFTER = 3600
    settings.WACONNECT_WEBHOOKS_ROTATION_OVERLAP = 600
    config = webhook_config()
    assert config.schedule == (0.0, 1.0, 60.0)
    assert (config.disable_after, config.rotation_overlap) == (3600, 600)
    v = retry.verdict(retry.Outcome.FAILED, 2, config.schedule, NOW)
    assert v.next_attempt_at == NOW + dt.timedelta(seconds=60)
    assert retry.verdict(retry.Outcome.FAILED, 3, config.schedule, NOW).status == "dead"


def test_config_refuses_an_empty_schedule_and_a_claim_shorter_than_an_attempt() -> None:
    with pytest.raises(ValueError, match="SCHEDULE"):
        WebhookConfig(schedule=())
    with pytest.raises(ValueError, match="CLAIM_TTL"):
        WebhookConfig(total_timeout=10, claim_ttl=5)


# -- SSRF ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.1",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "fc00::1",
        "100.64.0.1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "240.0.0.1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "2002:7f00:0001::",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert ssrf.refusal(ip) is not None
    with pytest.raises(ssrf.Refused):
        ssrf.check_address(ip, allow_private=False)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    ssrf.check_address(ipaddress.ip_address(address), allow_private=False)


def test_the_setting_allows_private_but_never_multicast_or_unspecified() -> None:
    ssrf.check_address(ipaddress.ip_address("127.0.0.1"), allow_private=True)
    ssrf.check_address(ipaddress.ip_address("10.0.0.1"), allow_private=True)
    for address in ("0.0.0.0", "224.0.0.1"):
        with pytest.raises(ssrf.Refused):
            ssrf.check_address(ipaddress.ip_address(address), allow_private=True)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "only http"),
        ("file:///etc/passwd", "only http"),
        ("gopher://example.com", "only http"),
        ("http:///nohost", "no host"),
        ("https://user:pw@example.com/", "user name"),
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://localhost/hook", "local name"),
        ("http://db.internal/hook", "local name"),
        ("http://example.com:99999/", "valid URL"),
    ],
)
def test_urls_refused_at_save_time(url: str, why: str) -> None:
    with pytest.raises(ssrf.Refused, match=why):
        ssrf.check_url(url, allow_private=False)


def test_a_public_url_gives_host_and_default_port() -> None:
    assert ssrf.check_url("https://example.com/x", allow_private=False) == ("example.com", 443)
    assert ssrf.check_url("http://example.com:8080/", allow_private=False) == ("example.com", 8080)
    assert ssrf.check_url("http://localhost:9/", allow_private=True) == ("localhost", 9)


async def test_a_name_resolving_to_loopback_is_refused_at_resolve_time() -> None:
    with pytest.raises(ssrf.Refused, match="loopback"):
        await ssrf.resolve("localhost", 80, allow_private=False)
    assert ipaddress.ip_address("127.0.0.1") in await ssrf.resolve(
        "localhost", 80, allow_private=True
    )


# -- signing ------------------------------------------------------------------------------


def test_signatures_verify_with_standardwebhooks_own_verify() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = '{"type":"session.status","data":{"state":"connected"}}'
    now = dt.datetime.now(dt.UTC)
    headers = signing.sign_headers("evt_1", body, [secret], now)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert Webhook(secret).verify(body, headers) == {
        "type": "session.status",
        "data": {"state": "connected"},
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("connected", "stopped"), headers)


def test_during_a_rotation_both_secrets_sign_and_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = "{}"
    headers = signing.sign_headers("evt_2", body, [new, old], dt.datetime.now(dt.UTC))
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


# -- event type filters -------------------------------------------------------------------


def test_an_empty_filter_hears_everything_but_the_opt_in_qr() -> None:
    assert wants([], "session.status")
    assert wants([], "message.received")
    assert not wants([], "session.qr")
    assert wants(["session.qr"], "session.qr")
    assert not wants(["session.qr"], "session.status")
    assert not wants([], "webhook.test")  # sent to one endpoint on request only
