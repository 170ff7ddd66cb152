"""neonize's device store (whatsmeow's tables), reached with plain SQL.

The store is a SQLite file or the app's PostgreSQL database (whatsmeow's own
``whatsmeow_*`` tables). Reading and deleting a device needs no neonize, so the
supervisor can remove a logged-out or deleted session's device without a worker,
and a worker can check that a device exists before asking neonize to resume it (a
JID with no row makes the Go side panic and abort the whole process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

_JID = re.compile(r"^(?P<user>[^@:.]+)(?:\.(?P<agent>\d+))?(?::(?P<device>\d+))?@(?P<server>.+)$")

#: Tables keyed by the device's JID that whatsmeow cascades from whatsmeow_device,
#: plus the one it does not (privacy tokens).
_PER_DEVICE_TABLES = {
    "whatsmeow_identity_keys": "our_jid",
    "whatsmeow_pre_keys": "jid",
    "whatsmeow_sessions": "our_jid",
    "whatsmeow_sender_keys": "our_jid",
    "whatsmeow_app_state_sync_keys": "jid",
    "whatsmeow_app_state_mutation_macs": "jid",
    "whatsmeow_app_state_version": "jid",
    "whatsmeow_contacts": "our_jid",
    "whatsmeow_chat_settings": "our_jid",
    "whatsmeow_message_secrets": "our_jid",
    "whatsmeow_privacy_tokens": "our_jid",
}


@dataclasses.dataclass(frozen=True)
class JidParts:
    user: str
    agent: int
    device: int
    server: str


def parse_jid(jid: str) -> JidParts:
    """``"4915112345678:12@s.whatsapp.net"`` → its parts; ValueError if malformed."""
    match = _JID.match(jid)
    if not match:
        raise ValueError(f"not a WhatsApp JID: {jid!r}")
    return JidParts(
        user=match["user"],
        agent=int(match["agent"] or 0),
        device=int(match["device"] or 0),
        server=match["server"],
    )


def is_postgres(store: str) -> bool:
    return store.startswith(("postgres://", "postgresql://"))


@contextlib.contextmanager
def _connect(store: str) -> Iterator[Any]:
    if is_postgres(store):
        import psycopg

        with psycopg.connect(store, autocommit=False) as conn:
            yield conn
    else:
        conn = sqlite3.connect(store, timeout=10)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()


def _param(store: str) -> str:
    return "%s" if is_postgres(store) else "?"


def _has_table(conn: Any, store: str, table: str) -> bool:
    if is_postgres(store):
        row = conn.execute("SELECT to_regclass(%s)", [table]).fetchone()
        return row[0] is not None
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", [table]
    ).fetchone()
    return row is not None


def device_exists(store: str, jid: str) -> bool:
    """Whether the store holds credentials for ``jid`` (so neonize can resume it)."""
    with _connect(store) as conn:
        if not _has_table(conn, store, "whatsmeow_device"):
            return False
        p = _param(store)
        row = conn.execute(f"SELECT 1 FROM whatsmeow_device WHERE jid = {p}", [jid]).fetchone()
        return row is not None


def delete_device(store: str, jid: str) -> bool:
    """Remove ``jid``'s device and everything keyed by it; True if it existed."""
    with _connect(store) as conn:
        if not _has_table(conn, store, "whatsmeow_device"):
            return False
        p = _param(store)
        for table, column in _PER_DEVICE_TABLES.items():
            if _has_table(conn, store, table):
                conn.execute(f"DELETE FROM {table} WHERE {column} = {p}", [jid])
        deleted = conn.execute(f"DELETE FROM whatsmeow_device WHERE jid = {p}", [jid]).rowcount
        conn.commit()
        return bool(deleted)
