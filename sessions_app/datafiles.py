"""The data directory holds secrets: the SQLite database, neonize's device store
(WhatsApp credentials) and the generated admin password.

Invariant: the directory and every directory below it are 700 and every file in
it is 600, whatever modes they had before (an install made with another umask, a
file created by an older version). Checked at every start (``AppConfig.ready``);
new secret files are created 600 from their first byte.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def secure_data_dir(data_dir: Path) -> None:
    """Make ``data_dir`` (created if missing) and everything in it private to its owner."""
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _chmod(data_dir, DIR_MODE)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            path = Path(root, name)
            if not path.is_symlink():
                _chmod(path, DIR_MODE)
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                _chmod(path, FILE_MODE)


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 600 if it is missing; make it 600 if it exists.

    SQLite gives a database's ``-wal`` and ``-shm`` files the mode of the database
    file, so an empty database file made here keeps those private too.
    """
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text``; the file is 600 before the text lands."""
    create_private(path)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def secure_at_start() -> None:
    """The start-up pass: the data directory, the SQLite database and the SQLite store."""
    from sessions_app import conf

    secrets: list[Path] = []
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3" and str(db["NAME"]) != ":memory:":
        secrets.append(Path(db["NAME"]))
    store = conf.neonize_store()
    if conf.driver_name() == "neonize" and "://" not in store:
        secrets.append(Path(store))
    try:
        secure_data_dir(Path(settings.DATA_DIR))
        for path in secrets:
            create_private(path)
    except OSError as error:  # a read-only mount: say so; the process may still work
        logger.warning("cannot secure the data directory: %s", error)


def _chmod(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError as error:  # another user's file, a read-only mount: say so, go on
        logger.warning("cannot make %s private (mode %o): %s", path, mode, error)
