"""A stand-in neonize worker that speaks the real wire protocol and misbehaves on cue.

Used by the fault tests in place of ``sessions_app.drivers.neonize_worker`` (the
driver's ``WorkerConfig.module``): it needs no network and can abort, go silent,
send garbage or refuse to stop, which a real neonize worker does only by accident.

Faults come from ``WACONNECT_TEST_FAULTS`` (JSON ``{"<session id>": "<fault>"}``);
a test triggers one by sending SIGUSR1 to the worker, so it happens exactly when
the test is ready for it, and the worker that replaces it stays healthy:

- ``abort``: ``os.abort()``;
- ``garbage``: a line that is not a protocol message;
- ``silent``: stops heartbeats and answers nothing;
- ``stuck`` (no signal needed): ignores "stop" and SIGTERM, so only SIGKILL ends it;
- anything else: healthy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time

from sessions_app.drivers import wire


def fault_for(session_id: int) -> str:
    faults = json.loads(os.environ.get("WACONNECT_TEST_FAULTS", "{}"))
    return str(faults.get(str(session_id), ""))


def main() -> None:
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    heartbeat = float(sys.argv[sys.argv.index("--heartbeat") + 1])
    sock = socket.socket(fileno=fd)
    lock = threading.Lock()
    beating = threading.Event()
    beating.set()

    def send(kind: str, **fields: object) -> None:
        with lock:
            sock.sendall(wire.encode(kind, **fields))

    def beat() -> None:
        while True:
            time.sleep(heartbeat)
            if beating.is_set():
                send("heartbeat")

    def misbehave(fault: str) -> None:
        if fault == "abort":
            os.abort()
        if fault == "garbage":
            with lock:
                sock.sendall(b"\x00\xffthis is not a message\n")
        if fault == "silent":
            beating.clear()

    threading.Thread(target=beat, daemon=True).start()
    send("ready")
    fault = ""
    for line in sock.makefile("rb"):
        command = wire.decode(line, wire.COMMANDS)
        kind = command["t"]
        if kind == "start":
            fault = fault_for(command["session"])
            send("connecting", at=time.monotonic())
            if command["jid"]:
                send("connected")
            else:
                send("qr", code="2@fake,qr,payload,for-tests", valid_for=60.0)
            signal.signal(signal.SIGUSR1, lambda *_, f=fault: misbehave(f))
            if fault == "stuck":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif kind == "stop" and fault != "stuck":
            send("stopped")
            os._exit(0)
        elif kind == "logout" and fault != "stuck":
            send("logged_out", reason="logged out as asked")
            os._exit(0)
    os._exit(0)  # the supervisor closed the socket


if __name__ == "__main__":
    main()
