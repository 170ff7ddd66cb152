"""The web side's only way to send a message: insert it ``queued``, ring the owner.

The API and the page call :func:`enqueue`; it never talks to a driver or the
supervisor. The owner (the session's lease holder) takes queued messages in
order, one at a time, paced, and records what happens (:mod:`messaging.outbound`);
a message still queued at its deadline expires.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from messaging import live, signals
from messaging.conf import messaging_config
from messaging.models import Message
from messaging.recipients import recipient_jid, validate_text
from messaging.states import Direction, Status, deadline_for
from sessions_app import doorbell
from sessions_app.intents import IntentRefused
from sessions_app.models import WaSession
from sessions_app.states import Desired

logger = logging.getLogger(__name__)

RING_REASON = live.RING_REASON


def enqueue(
    session: WaSession | int,
    to: str,
    text: str,
    deadline: dt.datetime | None = None,
    actor: str = "",
) -> Message:
    """Queue a text message to ``to`` (a phone number with its country code, or a
    JID) on ``session``; ring its owner once the row is committed.

    ``deadline`` (aware, in the future): not sent by then, the message expires;
    default now + ``WACONNECT_MESSAGE_TTL``. Raises ``ValidationError`` (a dict by
    field: ``to`` with code ``invalid_recipient``, ``text``, ``deadline``) for a
    request that can never be sent, and ``IntentRefused`` (``deleting``,
    ``not_found``) when the session cannot take messages. A session that is not
    connected is no refusal: the message waits for it until its deadline.
    """
    session_id = session.pk if isinstance(session, WaSession) else int(session)
    errors: dict[str, list[ValidationError]] = {}
    chat = ""
    try:
        chat = recipient_jid(to)
    except ValidationError as error:
        errors["to"] = error.error_list
    try:
        validate_text(text)
    except ValidationError as error:
        errors["text"] = error.error_list
    now = timezone.now()
    try:
        due = deadline_for(now, messaging_config().message_ttl, deadline)
    except ValueError as error:
        errors["deadline"] = [ValidationError(str(error), code="invalid")]
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        row = WaSession.objects.filter(pk=session_id).values_list("desired_state").first()
        if row is None:
            raise IntentRefused("not_found", "No such session.")
        if row[0] == Desired.DELETED:
            raise IntentRefused("deleting", "This session is being deleted.")
        message = Message.objects.create(
            session_id=session_id,
            direction=Direction.OUT,
            to=to.strip()[:128],
            chat=chat,
            from_me=True,
            kind="text",
            text=text,
            status=Status.QUEUED,
            deadline=due,
            actor=actor[:150],
            created_at=now,
            status_changed_at=now,
        )
        signals.messages_changed.send(sender=Message, messages=[message], change=signals.QUEUED)
        transaction.on_commit(lambda: _announce(message))
    logger.info(
        "%s queued message %s", actor or "someone", message.ref, extra={"session": session_id}
    )
    return message


def _announce(message: Message) -> None:
    doorbell.ring_supervisors_sync(message.session_id, RING_REASON)
    live.publish_sync([message])
