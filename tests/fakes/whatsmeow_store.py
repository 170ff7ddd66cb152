"""Rows in neonize's device store, as whatsmeow writes them after a pairing."""

from __future__ import annotations

import sqlite3


def add_device(store: str, jid: str) -> None:
    """A device row as whatsmeow writes one after pairing, plus per-device rows."""
    conn = sqlite3.connect(store)
    conn.execute(
        "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key,"
        " signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details,"
        " adv_account_sig, adv_account_sig_key, adv_device_sig)"
        " VALUES (?, 1, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
        [
            jid,
            b"n" * 32,
            b"i" * 32,
            b"s" * 32,
            b"g" * 64,
            b"a",
            b"d",
            b"x" * 64,
            b"k" * 32,
            b"v" * 64,
        ],
    )
    conn.execute(
        "INSERT INTO whatsmeow_identity_keys (our_jid, their_id, identity) VALUES (?, 'peer', ?)",
        [jid, b"p" * 32],
    )
    conn.execute(
        "INSERT INTO whatsmeow_privacy_tokens (our_jid, their_jid, token, timestamp)"
        " VALUES (?, 'peer', x'00', 0)",
        [jid],
    )
    conn.commit()
    conn.close()
