"""The fixed set of token scopes, and which Django permission each action also needs.

A scope narrows what a token may do; the user's Django permissions bound it. Both
are checked on every request (:mod:`api.auth`).
"""

from __future__ import annotations

SESSIONS_READ = "sessions:read"
SESSIONS_WRITE = "sessions:write"
MESSAGES_READ = "messages:read"
MESSAGES_SEND = "messages:send"
WEBHOOKS_MANAGE = "webhooks:manage"
METRICS_READ = "metrics:read"

SCOPES: dict[str, str] = {
    SESSIONS_READ: "List sessions, read their state, QR code and event log",
    SESSIONS_WRITE: "Create, start, stop, re-pair, log out and delete sessions",
    MESSAGES_READ: "Read a session's messages, in and out, and their status",
    MESSAGES_SEND: "Send messages from a session",
    WEBHOOKS_MANAGE: "Manage webhook endpoints and redeliver webhooks (with the webhooks "
    "permissions; not for tokens limited to some sessions)",
    METRICS_READ: "Read the web tier's /metrics (with the view permission: it counts sessions)",
}

#: Django permissions of sessions_app, by what the request does to a session.
VIEW = "sessions_app.view_wasession"
ADD = "sessions_app.add_wasession"
CHANGE = "sessions_app.change_wasession"
DELETE = "sessions_app.delete_wasession"
PERMISSIONS = (VIEW, ADD, CHANGE, DELETE)

#: Django permissions of the webhooks app: reading endpoints and deliveries needs
#: ``view_endpoint``; creating ``add_endpoint``; changing, rotating, testing and
#: enabling ``change_endpoint``; deleting ``delete_endpoint``; redelivering
#: ``change_delivery`` (as in the Django admin, where the same actions need them).
WEBHOOK_VIEW = "webhooks.view_endpoint"
WEBHOOK_ADD = "webhooks.add_endpoint"
WEBHOOK_CHANGE = "webhooks.change_endpoint"
WEBHOOK_DELETE = "webhooks.delete_endpoint"
WEBHOOK_REDELIVER = "webhooks.change_delivery"
WEBHOOK_PERMISSIONS = (WEBHOOK_VIEW, WEBHOOK_ADD, WEBHOOK_CHANGE, WEBHOOK_DELETE, WEBHOOK_REDELIVER)
#: What a message request needs of the user besides its scope: reading a session's
#: messages is seeing the session (``view``, which ``change`` implies); sending is
#: acting for it (``change``, like Start or Log out). Documented in the README.
MESSAGE_PERMISSIONS: dict[str, str] = {MESSAGES_READ: VIEW, MESSAGES_SEND: CHANGE}

#: The Django permission a scope needs outside the session endpoints (which name
#: theirs per action): ``/metrics`` tells how many sessions are in which state.
SCOPE_PERMISSIONS: dict[str, str] = {METRICS_READ: VIEW}


def validate_scopes(values: list[str]) -> list[str]:
    """The scopes in a stable order; ``ValueError`` names any unknown one."""
    unknown = sorted(set(values) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}")
    return [s for s in SCOPES if s in values]
