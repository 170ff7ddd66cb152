"""LOG_FORMAT=json: one object per line with the plain format's context (session,
owner), and, as in the plain format, no QR payload, pairing code or phone number."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from ops.jsonlog import JsonFormatter
from sessions_app import intents
from sessions_app.drivers.base import ConnectSpec, DriverEvent, EventSink, PairingCode, QrCode
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.logcontext import ContextFilter
from sessions_app.models import WaSession
from tests.unit.helpers import state_is, until
from tests.unit.test_supervisor import running

PHONE = "+4915112345678"


class SecretsSeen(SimulatedDriver):
    """The simulated driver, noting every QR payload and pairing code it reports."""

    def __init__(self, world: SimulatedWhatsApp) -> None:
        super().__init__(world)
        self.secrets: list[str] = []

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        def noted(event: DriverEvent) -> None:
            if isinstance(event, QrCode | PairingCode):
                self.secrets.append(event.code)
            on_event(event)

        await super().start(spec, noted)


@pytest.fixture
def streams() -> Iterator[dict[str, io.StringIO]]:
    """Everything sessions_app and ops log, in both formats."""
    out = {"json": io.StringIO(), "plain": io.StringIO()}
    plain = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(context)s] %(message)s")
    handlers = []
    for name, formatter in [("json", JsonFormatter()), ("plain", plain)]:
        handler = logging.StreamHandler(out[name])
        handler.setFormatter(formatter)
        handler.addFilter(ContextFilter())
        handlers.append(handler)
    loggers = [logging.getLogger(n) for n in ("sessions_app", "ops")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        for handler in handlers:
            lg.addHandler(handler)
    yield out
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)
        for handler in handlers:
            lg.removeHandler(handler)


def test_the_json_format_carries_the_context_fields_and_exceptions() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "sessions_app.x", logging.WARNING, __file__, 1, "hi %s", ("a",), None
    )
    record.session = 12
    record.owner = "host:1:abc"
    assert json.loads(formatter.format(record)) | {"time": "t"} == {
        "time": "t",
        "level": "WARNING",
        "logger": "sessions_app.x",
        "message": "hi a",
        "session": 12,
        "owner": "host:1:abc",
    }
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = formatter.format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_extra_attributes_beyond_the_context_are_not_shipped() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.qr = "2@secret-payload"
    assert "secret-payload" not in JsonFormatter().format(record)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_a_qr_round_with_a_pairing_code_logs_no_secret_in_either_format(
    streams: dict[str, io.StringIO],
) -> None:
    world = SimulatedWhatsApp(
        SimulatedTiming(first_qr_ttl=0.3, next_qr_ttl=0.2, qr_count=3, pair_delay=0.01)
    )
    driver = SecretsSeen(world)
    async with running(world) as supervisor:
        supervisor.driver = driver
        session = await sync_to_async(intents.create_session)("logs", "ada")
        await until(session.pk, state_is("qr_required"), timeout=5)
        row = await sync_to_async(WaSession.objects.get)(pk=session.pk)
        await sync_to_async(intents.pair_by_phone)(row, PHONE, "ada")
        await until(session.pk, lambda s: bool(s and s["pairing_code"]), timeout=5)
        await until(session.pk, state_is("qr_required"), timeout=5)
        await sync_to_async(intents.phone_gesture)(row, "scan", "ada")
        await until(session.pk, state_is("connected"), timeout=5)
    assert any(len(code) > 8 for code in driver.secrets)  # QR payloads were issued
    assert any("-" in code and len(code) == 9 for code in driver.secrets)  # a pairing code

    lines = [json.loads(line) for line in streams["json"].getvalue().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert any(line.get("session") == session.pk for line in lines)
    assert any(line.get("owner") == supervisor.owner for line in lines)
    for text in (streams["json"].getvalue(), streams["plain"].getvalue()):
        for secret in driver.secrets:
            assert secret not in text
        assert PHONE not in text and PHONE[1:] not in text
    assert f"[session={session.pk}]" in streams["plain"].getvalue()


SETUP_AND_LOG = """
import django, logging
django.setup()
logging.getLogger("sessions_app.probe").warning(
    "probe %s", "line", extra={"session": 5, "owner": "host:1:abc", "qr": "2@secret-payload"}
)
"""


def settings_log(tmp_path: Path, log_format: str) -> subprocess.CompletedProcess[str]:
    """A process configured by waconnect.settings from its environment logs one line."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LOG_FORMAT")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "waconnect.settings",
        "WACONNECT_DATA_DIR": str(tmp_path),
        "LOG_FORMAT": log_format,
    }
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-c", SETUP_AND_LOG],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_log_format_json_in_the_environment_makes_the_console_json(tmp_path: Path) -> None:
    done = settings_log(tmp_path, "json")
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(text) for text in done.stderr.splitlines() if "probe" in text]
    assert line | {"time": "t"} == {
        "time": "t",
        "level": "WARNING",
        "logger": "sessions_app.probe",
        "message": "probe line",
        "session": 5,
        "owner": "host:1:abc",
    }
    plain = settings_log(tmp_path, "plain")
    assert "[session=5 owner=host:1:abc] probe line" in plain.stderr
    assert "secret-payload" not in done.stderr + plain.stderr


def test_an_unknown_log_format_is_refused_at_start(tmp_path: Path) -> None:
    done = settings_log(tmp_path, "yaml")
    assert done.returncode != 0
    assert "LOG_FORMAT must be 'plain' or 'json'" in done.stderr
