"""The README's webhook receiver, run as written: it verifies what the dispatcher
sends (standardwebhooks), drops a repeat by its webhook-id and refuses a forgery."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async

from tests.unit.test_webhooks_dispatch import FAST, Outcomes
from webhooks import endpoints
from webhooks.conf import webhook_config
from webhooks.dispatcher import Dispatcher
from webhooks.models import Delivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]


def readme_receiver() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- webhook-receiver -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "README.md lost its <!-- webhook-receiver --> python block"
    return match.group(1)


async def test_the_readme_receiver_verifies_our_webhooks(tmp_path: Path) -> None:
    script = tmp_path / "receiver.py"
    script.write_text(readme_receiver())
    hook = await sync_to_async(endpoints.create)(url="http://127.0.0.1:1/placeholder")
    env = {**os.environ, "WACONNECT_WEBHOOK_SECRET": hook.secret, "PORT": "0"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=asyncio.subprocess.PIPE
    )
    outcomes = Outcomes()
    dispatcher = Dispatcher(config=webhook_config(**FAST), observer=outcomes)
    task = asyncio.create_task(dispatcher.run())
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            first = (await process.stdout.readline()).decode()
        port = int(first.split()[-1])
        hook.url = f"http://127.0.0.1:{port}/hook"
        await sync_to_async(hook.save)()

        delivery = await sync_to_async(endpoints.send_test)(hook)
        await outcomes.until(lambda seen: "delivered" in {s for _, _, s in seen})
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("webhook.test 1 {'message': 'A test event from waconnect.'")

        # A redelivery repeats the webhook-id: accepted (204), not handled twice.
        await sync_to_async(endpoints.redeliver)([delivery.pk])
        await outcomes.until(lambda seen: len(seen) == 2)
        assert (await sync_to_async(Delivery.objects.get)()).status == "delivered"

        async with httpx.AsyncClient() as client:
            forged = await client.post(
                hook.url,
                content=b'{"type":"session.status"}',
                headers={"webhook-id": "evt_x", "webhook-timestamp": "1",
                         "webhook-signature": "v1,AAAA"},
            )  # fmt: skip
        assert forged.status_code == 400
    finally:
        dispatcher.stop()
        await task
        process.terminate()
        rest, _ = await process.communicate()
    assert b"webhook.test" not in rest  # the repeat was dropped
