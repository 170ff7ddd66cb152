"""Where the create page's POST spends its time, profiled on the running server.

Run from the repository root::

    .venv/bin/python benchmarks/profile_create.py      # --creates 100 [--html] [--api]

Starts the one-process server (``benchmarks/liveserver.py``: ``manage.py runserver``,
the supervisor inside, SQLite, the simulated WhatsApp) with
``DJANGO_SETTINGS_MODULE=benchmarks.profiling`` (production's settings plus a
profiling middleware first), logs in with httpx and creates sessions as the create
page's script does (``POST /sessions/new/``, ``Accept: application/json``, the CSRF
header). First ``--creates`` unprofiled creates, timed on the client
(``perf_counter``, request sent → answer read); then as many again with
``X-Waconnect-Profile: 1``, profiled by pyinstrument on the event loop and in every
thread the request used; the server's report is printed. Not a test.

``--api``: the same for the HTTP API's path instead (a token from ``manage.py
create_api_token``): ``POST /api/v1/sessions``, then ``GET /sessions/{id}/qr?wait=25``
(JSON), each timed; both requests profiled.
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


def api_create_qr(client: httpx.Client, name: str, profile: bool) -> tuple[float, float]:
    """``POST /api/v1/sessions`` then ``GET …/qr?wait=25``: (create ms, create → QR ms)."""
    headers = {"Accept": "application/json"}
    if profile:
        headers["X-Waconnect-Profile"] = "1"
    started = time.perf_counter()
    response = client.post("/api/v1/sessions", json={"name": name}, headers=headers)
    created = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    session_id = response.json()["id"]
    response = client.get(f"/api/v1/sessions/{session_id}/qr", params={"wait": 25}, headers=headers)
    response.raise_for_status()
    return created, (time.perf_counter() - started) * 1000


def run_api(server: LiveServer, args: argparse.Namespace, tag: str) -> str:
    """The API phase of ``--api``: unprofiled, then profiled; the server's report."""
    from benchmarks.bench_api_qr import make_token

    token = make_token(server)
    with httpx.Client(
        base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        for i in range(5):  # warm-up
            api_create_qr(client, f"warm-{tag}-{i}", profile=False)
        phases: dict[str, list[tuple[float, float]]] = {"unprofiled": [], "profiled": []}
        for phase, samples in phases.items():
            for i in range(args.creates):
                samples.append(api_create_qr(client, f"{phase}-{tag}-{i}", phase == "profiled"))
                time.sleep(args.gap)
        rows = []
        for phase, samples in phases.items():
            rows.append((f"API create, {phase}", summary([c for c, _ in samples])))
            rows.append((f"API create → QR, {phase}", summary([q for _, q in samples])))
        print(f"load average after: {load_average()}")
        print(table(rows, label="client: request sent → answer read (ms)"), flush=True)
        # Rendering a few thousand profiled samples takes a while on a busy machine.
        url = "/__profile__/" + ("?html" if args.html else "")
        return client.get(url, timeout=600).text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--creates", type=int, default=100, help="creates per phase (100)")
    parser.add_argument("--gap", type=float, default=0.15, help="seconds between creates")
    parser.add_argument("--html", action="store_true", help="also write pyinstrument HTML")
    parser.add_argument("--api", action="store_true", help="the API's create → QR instead")
    args = parser.parse_args()
    print(f"load average before: {load_average()}", flush=True)
    timing = {"first_qr_ttl": 60, "next_qr_ttl": 20, "qr_count": 6}
    env = {"DJANGO_SETTINGS_MODULE": "benchmarks.profiling"}
    tag = secrets.token_hex(3)
    if args.api:
        env["WACONNECT_API_RATE"] = "100000/m"
        with LiveServer(timing=timing, extra_env=env, log_level="WARNING") as server:
            print(run_api(server, args, tag))
        return
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
