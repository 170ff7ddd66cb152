"""The README's API example, run as written against a live server, so it stays true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from benchmarks.liveserver import REPO

pytestmark = pytest.mark.timeout(120)


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "README.md lost its <!-- api-example --> python block"
    return match.group(1)


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
