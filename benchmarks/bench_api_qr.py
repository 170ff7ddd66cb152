"""create over the API → QR code in the client's hands: long poll vs polling every second.

Run from the repository root::

    .venv/bin/python benchmarks/bench_api_qr.py          # --samples 50 [--json out.json]

Shape: one process, as ``make run`` starts it (``manage.py runserver``: Daphne, the
supervisor inside, SQLite, the in-memory channel layer, the simulated WhatsApp,
nobody scans, first QR valid 60 s), started by ``benchmarks/liveserver.py``. A
token comes from ``manage.py create_api_token``. For each sample three clients run
side by side (asyncio, httpx, one connection pool each; the qr?wait one starts
0.25 s and the polling one 0.5 s after the first, so no two creates land at the
same instant), each creating a session of its own:

- **long poll**: ``POST /api/v1/sessions``, then ``GET /sessions/{id}?after_version=V&wait=25``
  until ``qr_available``, then ``GET /sessions/{id}/qr`` (JSON);
- **qr?wait**: ``POST /api/v1/sessions``, then one ``GET /sessions/{id}/qr?wait=25``
  (JSON), which answers as soon as the push shows a code (0.25 s after the first);
- **polling 1 s**: ``POST /api/v1/sessions``, then ``GET /sessions/{id}`` at once
  and every second until ``qr_available``, then the same ``GET .../qr`` — what the
  clients of WAHA, Evolution API and the like do.

Measured per client: **create → QR = the QR answer received − the create request
sent** (``time.perf_counter``, the client's clock). Not a test: nothing asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.liveserver import ADMIN_USERNAME, REPO, LiveServer
from benchmarks.stats import load_average, summary, table

POLL_INTERVAL = 1.0
#: The polling client starts this long after the long-poll client in each sample,
#: the qr?wait client this long (each alone on the server while it is measured).
STAGGER = 0.5
QR_WAIT_STAGGER = 0.25


async def create(api: httpx.AsyncClient, name: str) -> dict:
    response = await api.post("/sessions", json={"name": name})
    response.raise_for_status()
    return response.json()


async def qr(api: httpx.AsyncClient, session_id: int) -> dict:
    response = await api.get(f"/sessions/{session_id}/qr", headers={"Accept": "application/json"})
    response.raise_for_status()
    return response.json()


async def long_poll_client(api: httpx.AsyncClient, name: str, marks: dict[str, float]) -> float:
    """The long-poll client; ``marks`` gets when (ms after start) each step answered."""
    start = time.perf_counter()
    session = await create(api, name)
    marks["create answered"] = (time.perf_counter() - start) * 1000
    while not session["qr_available"]:
        response = await api.get(
            f"/sessions/{session['id']}",
            params={"after_version": session["version"], "wait": 25},
        )
        response.raise_for_status()
        session = response.json()
        marks.setdefault(
            f"long poll answered: {session['state']}", (time.perf_counter() - start) * 1000
        )
    await qr(api, session["id"])
    return (time.perf_counter() - start) * 1000


async def qr_wait_client(
    api: httpx.AsyncClient, name: str, delay: float, marks: dict[str, float]
) -> float:
    """Create, then one ``GET /sessions/{id}/qr?wait=25`` that answers with the first code."""
    await asyncio.sleep(delay)  # not at the same instant as the other clients' creates
    start = time.perf_counter()
    session = await create(api, name)
    marks["create answered"] = (time.perf_counter() - start) * 1000
    response = await api.get(
        f"/sessions/{session['id']}/qr",
        params={"wait": 25},
        headers={"Accept": "application/json"},
    )
    response.raise_for_status()
    return (time.perf_counter() - start) * 1000


async def polling_client(api: httpx.AsyncClient, name: str, delay: float) -> float:
    await asyncio.sleep(delay)  # not at the same instant as the other client's create
    start = time.perf_counter()
    session = await create(api, name)
    while True:
        response = await api.get(f"/sessions/{session['id']}")
        response.raise_for_status()
        if response.json()["qr_available"]:
            break
        await asyncio.sleep(POLL_INTERVAL)
    await qr(api, session["id"])
    return (time.perf_counter() - start) * 1000


def make_token(server: LiveServer) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "--user", ADMIN_USERNAME,
         "--name", "bench", "--scope", "sessions:read", "--scope", "sessions:write"],
        cwd=REPO, env=server.env(), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.strip()


async def run(
    url: str, token: str, samples: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    headers = {"Authorization": f"Bearer {token}"}
    results: dict[str, list[float]] = {
        "long poll on the session, then GET qr": [],
        "GET qr?wait=25 (one long poll)": [],
        "polling 1 s": [],
    }
    steps: dict[str, list[float]] = {}
    tag = secrets.token_hex(3)
    async with (
        httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=40) as a,
        httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=40) as b,
        httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=40) as c,
    ):
        for i in range(warmup + samples):
            marks: dict[str, float] = {}
            qr_marks: dict[str, float] = {}
            pushed, waited, polled = await asyncio.gather(
                long_poll_client(a, f"lp-{tag}-{i}", marks),
                qr_wait_client(c, f"qw-{tag}-{i}", QR_WAIT_STAGGER, qr_marks),
                polling_client(b, f"po-{tag}-{i}", STAGGER),
            )
            if i >= warmup:
                results["long poll on the session, then GET qr"].append(pushed)
                results["GET qr?wait=25 (one long poll)"].append(waited)
                results["polling 1 s"].append(polled)
                for step, ms in marks.items():
                    steps.setdefault(step, []).append(ms)
                steps.setdefault("qr?wait client: create answered", []).append(
                    qr_marks["create answered"]
                )
    return results, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=50, help="Samples per client (50).")
    parser.add_argument("--warmup", type=int, default=2, help="Uncounted first samples (2).")
    parser.add_argument("--json", type=Path, help="Also write the raw numbers here.")
    args = parser.parse_args()
    print(f"load average before: {load_average()}", flush=True)
    timing = {"first_qr_ttl": 60, "next_qr_ttl": 20, "qr_count": 6}
    env = {"WACONNECT_API_RATE": "100000/m"}
    with LiveServer(timing=timing, extra_env=env, log_level="WARNING") as server:
        token = make_token(server)
        results, steps = asyncio.run(run(server.url, token, args.samples, args.warmup))
    print(f"load average after: {load_average()}")
    rows = [(name, summary(values)) for name, values in results.items()]
    print(table(rows, label="create → QR in the client (ms)"))
    print("\nthe long-poll client's steps, ms after its create request was sent:")
    print(table([(step, summary(v)) for step, v in steps.items()], label="step"))
    ratio = rows[2][1]["p50"] / rows[0][1]["p50"]
    print(f"polling / long poll at p50: {ratio:,.0f}×")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "steps": steps}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "waconnect.settings")
    main()
