"""neonize's device store, created by real neonize: a device is found, resumed or removed
by its JID, and removing one leaves every other device alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sessions_app.drivers import device_store
from sessions_app.drivers.neonize_driver import ensure_store_schema
from tests.fakes.whatsmeow_store import add_device

pytestmark = pytest.mark.integration

ALICE = "4915100000001:3@s.whatsapp.net"
BOB = "4915100000002:7@s.whatsapp.net"


def rows(store: str, table: str, column: str, jid: str) -> int:
    conn = sqlite3.connect(store)
    try:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", [jid]).fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "whatsmeow.sqlite3"
    ensure_store_schema(str(path))  # real neonize creates its tables
    return path


@pytest.fixture
def store(schema: Path, tmp_path: Path) -> str:
    copy = tmp_path / "whatsmeow.sqlite3"
    copy.write_bytes(schema.read_bytes())
    return str(copy)


def test_neonize_creates_the_schema_once_before_any_worker(schema: Path) -> None:
    conn = sqlite3.connect(schema)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"whatsmeow_device", "whatsmeow_identity_keys", "whatsmeow_sessions"} <= tables


def test_device_exists_only_after_pairing_wrote_it(store: str) -> None:
    assert not device_store.device_exists(store, ALICE)
    add_device(store, ALICE)
    assert device_store.device_exists(store, ALICE)
    assert not device_store.device_exists(str(Path(store).with_name("missing.sqlite3")), ALICE)


def test_deleting_a_device_removes_its_rows_and_nothing_else(store: str) -> None:
    add_device(store, ALICE)
    add_device(store, BOB)
    assert device_store.delete_device(store, ALICE)
    assert not device_store.delete_device(store, ALICE), "already gone"
    for table, column in [
        ("whatsmeow_device", "jid"),
        ("whatsmeow_identity_keys", "our_jid"),
        ("whatsmeow_privacy_tokens", "our_jid"),
    ]:
        assert rows(store, table, column, ALICE) == 0, table
        assert rows(store, table, column, BOB) == 1, table


@pytest.mark.parametrize(
    ("jid", "parts"),
    [
        ("4915112345678:12@s.whatsapp.net", ("4915112345678", 0, 12, "s.whatsapp.net")),
        ("4915112345678.1:2@s.whatsapp.net", ("4915112345678", 1, 2, "s.whatsapp.net")),
        ("4915112345678@s.whatsapp.net", ("4915112345678", 0, 0, "s.whatsapp.net")),
    ],
)
def test_jids_parse_into_neonizes_fields(jid: str, parts: tuple[str, int, int, str]) -> None:
    parsed = device_store.parse_jid(jid)
    assert (parsed.user, parsed.agent, parsed.device, parsed.server) == parts


def test_malformed_jids_are_refused() -> None:
    for bad in ["", "no-at-sign", "@s.whatsapp.net", "a:b@s.whatsapp.net"]:
        with pytest.raises(ValueError, match="not a WhatsApp JID"):
            device_store.parse_jid(bad)
