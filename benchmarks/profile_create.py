"""Where the create page's POST spends its time, profiled on the running server.

Run from the repository root::

    .venv/bin/python benchmarks/profile_create.py      # --creates 100 [--html]

Starts the one-process server (``benchmarks/liveserver.py``: ``manage.py runserver``,
the supervisor inside, SQLite, the simulated WhatsApp) with
``DJANGO_SETTINGS_MODULE=benchmarks.profiling`` (production's settings plus a
profiling middleware first), logs in with httpx and creates sessions as the create
page's script does (``POST /sessions/new/``, ``Accept: application/json``, the CSRF
header). First ``--creates`` unprofiled creates, timed on the client
(``perf_counter``, request sent → answer read); then as many again with
``X-Waconnect-Profile: 1``, profiled by pyinstrument on the event loop and in every
thread the request used; the server's report is printed. Not a test.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.liveserver import ADMIN_PASSWORD, ADMIN_USERNAME, LiveServer
from benchmarks.stats import load_average, summary, table


def log_in(client: httpx.Client) -> str:
    """Log the client in as the live server's admin; the CSRF token for later posts."""
    client.get("/accounts/login/")
    token = client.cookies["csrftoken"]
    response = client.post(
        "/accounts/login/",
        data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD},
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 302, response.status_code
    client.get("/sessions/new/")
    return client.cookies["csrftoken"]


def create(client: httpx.Client, token: str, name: str, profile: bool) -> float:
    headers = {"X-CSRFToken": token, "Accept": "application/json"}
    if profile:
        headers["X-Waconnect-Profile"] = "1"
    started = time.perf_counter()
    response = client.post("/sessions/new/", data={"name": name}, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    assert response.json()["ok"], response.text
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--creates", type=int, default=100, help="creates per phase (100)")
    parser.add_argument("--gap", type=float, default=0.15, help="seconds between creates")
    parser.add_argument("--html", action="store_true", help="also write pyinstrument HTML")
    args = parser.parse_args()
    print(f"load average before: {load_average()}", flush=True)
    timing = {"first_qr_ttl": 60, "next_qr_ttl": 20, "qr_count": 6}
    env = {"DJANGO_SETTINGS_MODULE": "benchmarks.profiling"}
    tag = secrets.token_hex(3)
    with (
        LiveServer(timing=timing, extra_env=env, log_level="WARNING") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        token = log_in(client)
        for i in range(5):  # warm-up
            create(client, token, f"warm-{tag}-{i}", profile=False)
        plain = []
        for i in range(args.creates):
            plain.append(create(client, token, f"plain-{tag}-{i}", profile=False))
            time.sleep(args.gap)  # let the supervisor's work for it finish
        profiled = []
        for i in range(args.creates):
            profiled.append(create(client, token, f"prof-{tag}-{i}", profile=True))
            time.sleep(args.gap)
        report = client.get("/__profile__/" + ("?html" if args.html else "")).text
        if args.html:
            print(f"HTML profiles in {server.data_dir}", file=sys.stderr)
            input("press enter to stop the server")
    print(f"load average after: {load_average()}")
    print(
        table(
            [
                ("create POST, unprofiled", summary(plain)),
                ("create POST, profiled", summary(profiled)),
            ],
            label="client: request sent → answer read (ms)",
        )
    )
    print(report)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "waconnect.settings")
    main()
