"""The simulated WhatsApp's list of linked devices, kept in a file across restarts.

WhatsApp remembers a linked device until the phone or the client logs it out, and
the client keeps its credentials in a store on disk; so a restarted server resumes
its sessions without a new QR code. The simulation keeps the same promise with one
small JSON file (``{"version": 1, "devices": {jid: session id}}``), mode 600,
replaced atomically on every change: a killed process leaves the old list or the
new one, never half of either. It is not fsynced (a simulation need not survive a
power cut, and the write runs on the supervisor's event loop: it must stay short).

Own code rather than a library: it is one ``os.replace`` of a temporary file, and
the maintained atomic-write packages add nothing for a file this small.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

VERSION = 1


class DeviceFileError(ValueError):
    """The device file exists but is not one this code wrote."""


def load_devices(path: Path) -> dict[str, int]:
    """The devices linked in ``path`` (JID → session id); none when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
        return {str(jid): int(sid) for jid, sid in data["devices"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DeviceFileError(
            f"{path} is not a simulated WhatsApp device list ({exc}); move it away to "
            f"start with no linked devices"
        ) from None


def save_devices(path: Path, devices: dict[str, int]) -> None:
    """Replace ``path`` with ``devices`` atomically; the file is readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"version": VERSION, "devices": devices}, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp: mode 600 already
            file.write(payload)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
