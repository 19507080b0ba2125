"""API keys: create (the key is returned once), revoke, and look one up for a request."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from bim_core.errors import ServiceError

from .models import ApiKey

KEY_PREFIX = "bim_"
MAX_KEYS_PER_USER = 50
# last_used_at is written at most this often per key: no database write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def api_key_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiKey, str]:
    """A new key for `user`; returns the row and the key itself, which is never stored."""
    name = name.strip()[:100]
    if not name:
        raise ServiceError("name_required", "name the key (what it is for)")
    if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_KEYS_PER_USER:
        raise ServiceError("too_many_keys", f"at most {MAX_KEYS_PER_USER} live keys; revoke one first", status=409)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(user=user, name=name, prefix=key[: len(KEY_PREFIX) + 6], digest=key_digest(key))
    return row, key


def api_key_revoke(*, user: AbstractBaseUser, key_id: int) -> ApiKey:
    row = ApiKey.objects.filter(pk=key_id, user=user).first()
    if row is None:
        raise ServiceError("unknown_key", "no key of yours has this id", status=404)
    if row.revoked_at is None:
        row.revoked_at = timezone.now()
        row.save(update_fields=["revoked_at"])
    return row


def api_key_user(key: str) -> AbstractBaseUser | None:
    """The active user a live key belongs to, or None; notes when the key was last used."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = ApiKey.objects.select_related("user").filter(digest=key_digest(key), revoked_at__isnull=True).first()
    if row is None or not row.user.is_active:
        return None
    now = timezone.now()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user
