"""The data directory is private: directory 700, files 600, whatever existed before."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def open_data_dir(tmp_path: Path) -> Path:
    """A data directory as an older install left it: 755, its secrets 644."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "neonize").mkdir()
    for name in ("waconnect.sqlite3", "whatsmeow.sqlite3", "admin-password.txt"):
        (data / name).write_text("old\n")
    (data / "neonize" / "device.json").write_text("{}")
    for path in [data, data / "neonize"]:
        path.chmod(0o755)
    for path in data.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    return data


def test_any_start_makes_an_existing_data_directory_private(open_data_dir: Path) -> None:
    """``manage.py`` of any kind (here ``check``) fixes the modes before it does its job."""
    env = {
        **os.environ,
        "WACONNECT_DATA_DIR": str(open_data_dir),
        "DATABASE_URL": f"sqlite:///{open_data_dir / 'waconnect.sqlite3'}",
    }
    subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    assert _mode(open_data_dir) == 0o700
    assert _mode(open_data_dir / "neonize") == 0o700
    for path in open_data_dir.rglob("*"):
        if path.is_file():
            assert _mode(path) == 0o600, path


def test_a_new_sqlite_database_and_store_are_private_from_the_start(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    env = {
        **os.environ,
        "WACONNECT_DATA_DIR": str(data),
        "WACONNECT_DRIVER": "neonize",
        "DATABASE_URL": f"sqlite:///{data / 'waconnect.sqlite3'}",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    assert _mode(data) == 0o700
    names = {p.name: _mode(p) for p in data.iterdir()}
    assert names.keys() >= {"waconnect.sqlite3", "whatsmeow.sqlite3"}
    assert set(names.values()) == {0o600}, names


@pytest.mark.django_db
def test_ensure_admin_writes_the_password_600_over_an_old_644_file(
    open_data_dir: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    settings.DATA_DIR = open_data_dir
    path = open_data_dir / "admin-password.txt"
    call_command("ensure_admin", stdout=StringIO())
    assert _mode(path) == 0o600
    password = path.read_text().strip()
    assert password != "old"
    assert len(password) >= 16
