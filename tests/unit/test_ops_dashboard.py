"""The Grafana dashboard and the README's alert rules query only what waconnect exports:
every metric, every label they select or group by, every label value they match."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ops.collector import web_registry
from ops.views import _Both

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "waconnect.json"
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"

#: Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "le"}

SELECTOR = re.compile(r"\b(waconnect_[a-z0-9_]+)\b\s*(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")

Exported = dict[str, dict[str, set[str]]]  # sample name -> label -> values


def exported() -> Exported:
    """Every sample the web tier's /metrics serves (per-process and database-wide)."""
    web_registry.cache_clear()
    text = generate_latest(_Both()).decode()
    found: Exported = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = found[sample.name]
            for name, value in sample.labels.items():
                labels[name].add(value)
    return found


def problems(expr: str, metrics: Exported) -> list[str]:
    """What in ``expr`` waconnect does not export (empty: all of it is)."""
    wrong = []
    used = SELECTOR.findall(expr)
    if not used:
        wrong.append("queries no waconnect metric")
    labels_in_expr: set[str] = set(TARGET_LABELS)
    for name, braces in used:
        if name not in metrics:
            wrong.append(f"{name} is not exported")
            continue
        labels_in_expr |= set(metrics[name])
        for label, op, value in MATCHER.findall(braces or ""):
            if label not in metrics[name]:
                wrong.append(f"{name} has no label {label}")
                continue
            wanted = value.split("|") if op in ("=~", "!~") else [value]
            missing = [v for v in wanted if v not in metrics[name][label]]
            if missing:
                wrong.append(f"{name}{{{label}}} never takes {missing}")
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in labels_in_expr:
                wrong.append(f"groups by {label}, which no metric in it has")
    return wrong


def dashboard_exprs() -> list[tuple[str, str]]:
    data = json.loads(DASHBOARD.read_text())
    found = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def readme_rules() -> str:
    """The YAML block of the README's "Example alert rules" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Example alert rules", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, "the README's alert rules section has no yaml block"
    return match.group(1)


def test_the_checker_catches_what_is_not_exported() -> None:
    metrics = exported()
    assert problems("sum(rate(waconnect_reconnects_total[5m]))", metrics) == []
    assert problems("waconnect_nope_total", metrics) == ["waconnect_nope_total is not exported"]
    assert problems('waconnect_sessions{state="asleep"}', metrics)
    assert problems('waconnect_sessions{colour="red"}', metrics)
    assert problems("sum by (colour) (waconnect_sessions)", metrics)
    assert problems("up", metrics) == ["queries no waconnect metric"]


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    exprs = " ".join(expr for _, expr in dashboard_exprs())
    for metric in [
        "waconnect_sessions",  # sessions by state
        "waconnect_reconnects_total",  # reconnect rate
        "waconnect_lease_renewal_duration_seconds_bucket",  # lease renewal latency
        "waconnect_worker_crashes_total",  # worker crashes
        # messages and webhooks, now that they exist
        "waconnect_messages_sent_total",  # sent / failed / unknown / expired
        "waconnect_message_send_seconds_bucket",  # send latency
        "waconnect_messages_received_total",  # incoming messages
        "waconnect_messages_outbound",  # outbound backlog size
        "waconnect_messages_oldest_queued_age_seconds",  # outbound backlog age
        "waconnect_webhook_deliveries_total",  # deliveries by outcome
        "waconnect_webhook_delivery_latency_seconds_bucket",  # delivery latency
        "waconnect_webhook_backlog",  # backlog size
        "waconnect_webhook_backlog_oldest_age_seconds",  # backlog age
    ]:
        assert re.search(rf"\b{metric}\b", exprs), metric


def test_every_dashboard_query_uses_exported_metrics_and_labels() -> None:
    metrics = exported()
    wrong = {
        f"{title}: {expr}": found
        for title, expr in dashboard_exprs()
        if (found := problems(expr, metrics))
    }
    assert wrong == {}


def test_the_readme_alert_rules_are_the_shipped_file_and_query_exported_metrics() -> None:
    text = readme_rules()
    assert yaml.safe_load(text) == yaml.safe_load(RULES.read_text())
    rules = [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    metrics = exported()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Waconnect[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        assert "for" not in rule or re.fullmatch(r"\d+[smh]", rule["for"])
        assert problems(rule["expr"], metrics) == [], rule["alert"]


def waconnect_families() -> set[str]:
    """Every family name waconnect defines: per-process and database-wide."""
    from prometheus_client import REGISTRY

    from ops.metrics import DATABASE_GAUGES

    names = {f.name for f in REGISTRY.collect() if f.name.startswith("waconnect_")}
    return names | set(DATABASE_GAUGES)


def test_every_defined_metric_is_exported_and_named_in_the_readme() -> None:
    metrics = exported()
    readme = (ROOT / "README.md").read_text()
    for family in waconnect_families():
        assert any(name == family or name.startswith(f"{family}_") for name in metrics), family
        shown = family + "_total" if f"{family}_total" in metrics else family
        assert f"`{shown}" in readme, f"README's Operations section does not name {shown}"


def test_the_alert_rules_watch_messages_and_webhooks() -> None:
    """What to alert on now that messages and webhooks flow: sends that fail or end
    unknown, messages that wait in the queue, deliveries that die, a backlog that
    stops draining."""
    exprs = " ".join(
        rule["expr"]
        for group in yaml.safe_load(readme_rules())["groups"]
        for rule in group["rules"]
    )
    for metric in [
        "waconnect_messages_sent_total",
        "waconnect_messages_oldest_queued_age_seconds",
        "waconnect_webhook_dead_total",
        "waconnect_webhook_backlog_oldest_age_seconds",
    ]:
        assert re.search(rf"\b{metric}\b", exprs), metric
