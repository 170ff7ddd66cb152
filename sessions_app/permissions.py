"""Who may do what with sessions: Django's model permissions, for staff only.

One place for the rule, used by the pages (``PermissionRequiredMixin``), the
sockets (``has_perm`` on connect and on every re-check) and the templates
(``perms``):

- every page, action and socket needs an **active staff** user (this is the
  admins' tool, like the Django admin); superusers have every permission;
- ``view_wasession`` to see the list, a session and their sockets (as in the
  Django admin, ``change_wasession`` implies seeing);
- ``add_wasession`` to create (with seeing: the new session's QR code follows);
- ``change_wasession`` for start, stop, new QR, pairing code, log out and the
  simulated phone's gestures;
- ``delete_wasession`` to delete.
"""

from __future__ import annotations

from typing import Any

VIEW = "sessions_app.view_wasession"
ADD = "sessions_app.add_wasession"
CHANGE = "sessions_app.change_wasession"
DELETE = "sessions_app.delete_wasession"

#: The permission each action of the detail page needs (``simulate-*`` is a change).
ACTION_PERMISSIONS: dict[str, str] = {
    "start": CHANGE,
    "stop": CHANGE,
    "new-qr": CHANGE,
    "logout": CHANGE,
    "pair-phone": CHANGE,
    "delete": DELETE,
}


def action_permission(action: str) -> str:
    """The permission ``action`` needs; unknown actions need ``change`` (then 404)."""
    return ACTION_PERMISSIONS.get(action, CHANGE)


def is_operator(user: Any) -> bool:
    """An active staff user: the only kind that may use the pages and sockets at all."""
    return bool(
        user is not None
        and user.is_authenticated
        and getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
    )


def can_view(user: Any) -> bool:
    """May see sessions (their list, QR codes, pairing codes, sockets)."""
    return is_operator(user) and (user.has_perm(VIEW) or user.has_perm(CHANGE))


def can(user: Any, *perms: str) -> bool:
    """Is an operator and has every one of ``perms``."""
    return is_operator(user) and user.has_perms(perms)
