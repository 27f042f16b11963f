"""Tenants, API keys and the authenticated caller.

A key is ``lethe_<prefix>_<secret>``: the prefix finds the row, and only the SHA-256 of
the whole key is stored (keys carry 256 bits of randomness, so no slow hash is needed;
comparison is constant-time). The plaintext is returned once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
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


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal a presented key stands for, or None for an unknown or revoked key."""
    admin = get_settings().resolved_admin_key()
    if hmac.compare_digest(presented.encode(), admin.encode()):
        return Principal(DEFAULT_TENANT_ID, "admin-key", frozenset({Scope.admin.value}))
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(_digest(presented), key.key_sha256):
        return None
    return Principal(key.tenant_id, f"key:{key.id}", frozenset(key.scopes))


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
    return key
