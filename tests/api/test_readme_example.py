"""The README's API example, run as written against a live server, so it stays true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.liveserver import REPO, LiveServer

pytestmark = pytest.mark.timeout(120)


def readme_example(marker: str = "api-example") -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README.md lost its <!-- {marker} --> python block"
    return match.group(1)


def run_example(
    code: str, directory: Path, url: str, token: str
) -> subprocess.CompletedProcess[str]:
    script = directory / "example.py"
    script.write_text(code)
    env = {**os.environ, "WACONNECT_URL": url, "WACONNECT_TOKEN": token}
    return subprocess.run(
        [sys.executable, str(script)], cwd=directory, env=env, capture_output=True, text=True,
        timeout=90, check=False,
    )  # fmt: skip


def test_the_readme_example_creates_a_session_and_gets_its_qr(
    live_api: tuple[str, str], tmp_path: Path
) -> None:
    url, token = live_api
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {**os.environ, "WACONNECT_URL": url, "WACONNECT_TOKEN": token}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("scan qr.svg before 20")
    assert (tmp_path / "qr.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg"))
    assert token not in result.stdout + result.stderr
    # Run twice: the Idempotency-Key makes the retry return the same session.
    again = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=90, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    names = httpx.get(
        f"{url}/api/v1/sessions?name=crm-42", headers={"Authorization": f"Bearer {token}"}
    ).json()["data"]
    assert len(names) == 1


def test_the_readme_messages_example_sends_once(
    live_api: tuple[str, str], live_api_server: LiveServer, tmp_path: Path
) -> None:
    """The messages example, on the README's session once its phone scanned the code."""
    url, token = live_api
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=10) as api:

        def next_version(session: dict[str, Any]) -> dict[str, Any]:
            """The session once it changed (the long poll; capped at 1 s on this server)."""
            params = {"after_version": session["version"], "wait": 25}
            return api.get(f"/sessions/{session['id']}", params=params).json()

        found = api.get("/sessions", params={"name": "crm-42"}).json()["data"]
        session = found[0] if found else api.post("/sessions", json={"name": "crm-42"}).json()
        if session["state"] not in ("qr_required", "connected", "connecting"):
            session = api.post(f"/sessions/{session['id']}/new-qr").json()
        while not (session["qr_available"] or session["state"] == "connected"):
            session = next_version(session)
        if session["state"] != "connected":
            subprocess.run(
                [sys.executable, "manage.py", "simulate_phone", "scan", "crm-42"], cwd=REPO,
                env=live_api_server.env(), capture_output=True, text=True, timeout=60,
                check=True,
            )  # fmt: skip
        # From another process without Redis, the gesture is seen at the supervisor's
        # next reconcile.
        while session["state"] != "connected":
            session = next_version(session)

    first = run_example(readme_example("api-example-messages"), tmp_path, url, token)
    assert first.returncode == 0, first.stderr
    ref, status = first.stdout.split()
    assert status in ("sent", "delivered", "read"), first.stdout
    again = run_example(readme_example("api-example-messages"), tmp_path, url, token)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[0] == ref  # the Idempotency-Key: sent once
    listed = httpx.get(f"{url}/api/v1/sessions/{session['id']}/messages", headers=headers).json()
    assert [m["id"] for m in listed["data"]] == [ref]
    assert token not in first.stdout + first.stderr
