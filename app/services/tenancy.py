"""Tenants, API keys and the authenticated caller.

A key is ``lethe_<prefix>_<secret>``: the prefix finds the row, and only the SHA-256 of
the whole key is stored (keys carry 256 bits of randomness, so no slow hash is needed;
comparison is constant-time). The plaintext is returned once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import DEFAULT_TENANT_ID, ApiKey, Scope, Tenant
from app.services import audit
from app.services.errors import Conflict, InvalidInput, NotFound
from app.settings import get_settings

KEY_PREFIX = "lethe"
ALL_SCOPES = frozenset(s.value for s in Scope)


@dataclass(frozen=True)
class Principal:
    """Who is calling: their tenant, the audit actor name, and what they may do."""

    tenant_id: str
    actor: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return Scope.admin.value in self.scopes or scope in self.scopes


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# A key authenticated in this process is believed for this long without asking the
# database again, so a revocation from elsewhere (another server process, a script) takes
# effect within this many seconds; one through revoke_api_key in this process as soon as
# it commits.
KEY_CACHE_TTL_S = 5.0
_KEY_CACHE_MAX = 10_000
_key_cache: dict[str, tuple[Principal, float]] = {}  # SHA-256 of the key → (who, until)


def _admin(presented: str) -> Principal | None:
    admin = get_settings().resolved_admin_key()
    if hmac.compare_digest(presented.encode(), admin.encode()):
        return Principal(DEFAULT_TENANT_ID, "admin-key", frozenset({Scope.admin.value}))
    return None


def authenticate_cached(presented: str) -> Principal | None:
    """The principal for the admin key or for a key :func:`authenticate` accepted less
    than ``KEY_CACHE_TTL_S`` ago; None means: ask :func:`authenticate`."""
    admin = _admin(presented)
    if admin is not None:
        return admin
    hit = _key_cache.get(_digest(presented))
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    return None


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal a presented key stands for, or None for an unknown or revoked key."""
    admin = _admin(presented)
    if admin is not None:
        return admin
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if key is None or key.revoked_at is not None:
        return None
    digest = _digest(presented)
    if not hmac.compare_digest(digest, key.key_sha256):
        return None
    principal = Principal(key.tenant_id, f"key:{key.id}", frozenset(key.scopes))
    if len(_key_cache) >= _KEY_CACHE_MAX:
        _key_cache.clear()
    _key_cache[digest] = (principal, time.monotonic() + KEY_CACHE_TTL_S)
    return principal


def create_tenant(session: Session, name: str, actor: str) -> Tenant:
    if session.scalar(select(Tenant.id).where(Tenant.name == name)):
        raise Conflict(f"a tenant named {name!r} already exists")
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    audit.record(session, tenant.id, "tenant.created", "tenant", tenant.id, actor, name=name)
    return tenant


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id}")
    return tenant


def create_api_key(
    session: Session, tenant_id: str, name: str, scopes: list[str], actor: str
) -> tuple[ApiKey, str]:
    """A new key for the tenant; returns the row and the plaintext (shown only now)."""
    get_tenant(session, tenant_id)
    unknown = set(scopes) - ALL_SCOPES
    if unknown or not scopes:
        raise InvalidInput(
            f"scopes must be a non-empty subset of {sorted(ALL_SCOPES)}; unknown: {sorted(unknown)}"
        )
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        tenant_id=tenant_id,
        name=name,
        prefix=prefix,
        key_sha256=_digest(plaintext),
        scopes=sorted(set(scopes)),
    )
    session.add(key)
    session.flush()
    audit.record(
        session,
        tenant_id,
        "api_key.created",
        "api_key",
        key.id,
        actor,
        name=name,
        scopes=key.scopes,
    )
    return key, plaintext


def revoke_api_key(session: Session, tenant_id: str, key_id: str, actor: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None or key.tenant_id != tenant_id:
        raise NotFound(f"no API key {key_id}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        audit.record(session, tenant_id, "api_key.revoked", "api_key", key.id, actor)
    # dropped once committed: before, a racing request could cache the key afresh
    event.listen(session, "after_commit", lambda _: _key_cache.clear(), once=True)
    return key
