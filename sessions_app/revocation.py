"""Open sockets lose their rights with their user: logout, deactivation, permissions.

A socket checks its user once, on connect. Whatever may take rights away later
tells the user's sockets (their per-user group, ``doorbell.user_group``) to check
again against the database:

- ``user_logged_out``: the sockets of that login session close at once (4401);
- a user saved (deactivated, staff status or superuser removed, password changed)
  or deleted;
- permissions removed from a user, a user removed from a group, permissions
  removed from a group, a group or permission deleted.

A message can be lost (channel layers are lossy, and a queryset ``update()``
sends no signal), so every socket also re-checks on its browser's pings (every
25 s, see static/waconnect/live.js). Gaining rights needs no message.
"""

from __future__ import annotations

import hashlib
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.contrib.auth.signals import user_logged_out
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.utils.crypto import constant_time_compare

from sessions_app import doorbell

_REMOVALS = {"post_remove", "post_clear"}


def session_key_hash(session_key: str | None) -> str:
    """What a logout message carries instead of the session key itself."""
    return hashlib.sha256(session_key.encode()).hexdigest() if session_key else ""


def fresh_user(session_key: str | None) -> Any:
    """The user of a login session as an HTTP request would see it now.

    Reads the session from its store and the user from the database and checks
    them as ``django.contrib.auth.get_user`` does for a request: an expired or
    flushed session, an unknown backend, an inactive or deleted user or a changed
    password give ``AnonymousUser``. Unlike ``get_user`` it writes nothing (no
    flush, no hash upgrade): a socket's check must not log anyone out.
    Synchronous (database).
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    try:
        user_id = auth.get_user_model()._meta.pk.to_python(store[auth.SESSION_KEY])
        backend_path = store[auth.BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return AnonymousUser()
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return AnonymousUser()
    user = auth.load_backend(backend_path).get_user(user_id)
    if user is None:
        return AnonymousUser()
    stored = store.get(auth.HASH_SESSION_KEY) or ""
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not stored or not any(constant_time_compare(stored, h) for h in hashes):
        return AnonymousUser()
    return user


def _recheck(user_ids: set[int] | list[int], logged_out: str = "") -> None:
    ids = sorted({int(pk) for pk in user_ids if pk is not None})
    if ids:
        transaction.on_commit(lambda: doorbell.recheck_users_sync(ids, logged_out))


def _users_in_groups(group_ids: Any) -> set[int]:
    user_model = auth.get_user_model()
    return set(user_model.objects.filter(groups__in=group_ids).values_list("pk", flat=True))


def on_logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None and user.pk is not None:
        session = getattr(request, "session", None)
        key = session.session_key if session is not None else None
        _recheck([user.pk], session_key_hash(key))


def on_user_saved(sender: Any, instance: Any, created: bool, update_fields: Any, **kw: Any) -> None:
    if created or (update_fields is not None and set(update_fields) == {"last_login"}):
        return  # a new user has no sockets; a login's last_login takes no right away
    _recheck([instance.pk])


def on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    _recheck([instance.pk])


def on_user_m2m(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """``user.groups`` / ``user.user_permissions`` changed, from either side."""
    if action == "pre_clear" and reverse:
        # group.user_set.clear() / permission.user_set.clear(): who is affected is
        # only known before the rows go.
        instance._waconnect_users = set(instance.user_set.values_list("pk", flat=True))
        return
    if action not in _REMOVALS:
        return
    if not reverse:
        _recheck([instance.pk])
    elif action == "post_clear":
        _recheck(getattr(instance, "_waconnect_users", set()))
    else:
        _recheck(pk_set or set())


def on_group_permissions(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """``group.permissions`` changed, from either side."""
    if action == "pre_clear" and reverse:
        instance._waconnect_users = _users_in_groups(instance.group_set.all())
        return
    if action not in _REMOVALS:
        return
    if not reverse:
        _recheck(_users_in_groups([instance.pk]))
    elif action == "post_clear":
        _recheck(getattr(instance, "_waconnect_users", set()))
    else:
        _recheck(_users_in_groups(pk_set or []))


def on_group_or_permission_deleting(sender: Any, instance: Any, **kwargs: Any) -> None:
    user_model = auth.get_user_model()
    if isinstance(instance, Group):
        users = user_model.objects.filter(groups=instance)
    else:
        users = user_model.objects.filter(
            Q(user_permissions=instance) | Q(groups__permissions=instance)
        )
    _recheck(set(users.values_list("pk", flat=True)))


def connect() -> None:
    """Connect the handlers (``SessionsAppConfig.ready``)."""
    user_model = auth.get_user_model()
    uid = "waconnect.revocation"
    user_logged_out.connect(on_logged_out, dispatch_uid=f"{uid}.logout")
    post_save.connect(on_user_saved, sender=user_model, dispatch_uid=f"{uid}.user_saved")
    post_delete.connect(on_user_deleted, sender=user_model, dispatch_uid=f"{uid}.user_deleted")
    for through in (user_model.groups.through, user_model.user_permissions.through):
        m2m_changed.connect(on_user_m2m, sender=through, dispatch_uid=f"{uid}.{through.__name__}")
    m2m_changed.connect(
        on_group_permissions, sender=Group.permissions.through, dispatch_uid=f"{uid}.group_perms"
    )
    for model in (Group, Permission):
        pre_delete.connect(
            on_group_or_permission_deleting, sender=model, dispatch_uid=f"{uid}.{model.__name__}"
        )
