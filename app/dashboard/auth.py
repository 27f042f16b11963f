"""Dashboard sessions: an API key signs in once, the browser then holds a signed cookie.

The cookie holds ``{sub, tid, exp, n}`` (the API key's *id*, or ``admin`` plus a keyed
fingerprint of the bootstrap admin key — never a key itself), MAC'd with HMAC-SHA256
under a key derived from the server secret. Every request re-checks the key behind it,
so revoking the key (or rotating the admin key or the server secret) ends its sessions.
POST forms carry a CSRF token bound to the session's nonce (sign-in: to a pre-session
cookie), on top of ``SameSite=Lax`` and an ``Origin`` check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request, Response
from sqlalchemy.orm import Session

from app.db.models import DEFAULT_TENANT_ID, ApiKey, Scope, Tenant
from app.services.tenancy import Principal, authenticate
from app.settings import get_settings

SESSION_COOKIE = "lethe_dashboard"
LOGIN_COOKIE = "lethe_dashboard_login"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = 8 * 3600
LOGIN_FORM_SECONDS = 3600
ADMIN_SUBJECT = "admin"
# the dashboard only reads; a key must at least be allowed to read requests
REQUIRED_SCOPE = Scope.requests_read.value


def _key(purpose: bytes) -> bytes:
    """A key for one purpose, derived from the server secret (never the secret itself)."""
    return hmac.new(
        get_settings().resolved_secret_key(), b"lethe/dashboard/" + purpose, hashlib.sha256
    ).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(purpose: bytes, message: bytes) -> str:
    return _b64(hmac.new(_key(purpose), message, hashlib.sha256).digest())


def _admin_fingerprint() -> str:
    """Keyed fingerprint of the current admin key: a new admin key ends old sessions."""
    return _mac(b"admin-fingerprint", get_settings().resolved_admin_key().encode())[:22]


@dataclass(frozen=True)
class Viewer:
    """A signed-in dashboard user: the principal its key stands for, plus what pages need."""

    principal: Principal
    key_label: str
    tenant_name: str
    csrf_token: str
    expires_at: int


def encode_session(payload: dict[str, Any]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_mac(b'session', body.encode())}"


def decode_session(cookie: str | None, now: float | None = None) -> dict[str, Any] | None:
    """The payload of a well-formed, correctly MAC'd, unexpired cookie, else None."""
    if not cookie or cookie.count(".") != 1:
        return None
    body, mac = cookie.split(".")
    if not hmac.compare_digest(mac, _mac(b"session", body.encode())):
        return None
    try:
        payload = json.loads(_unb64(body))
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int):
        return None
    if payload["exp"] <= (time.time() if now is None else now):
        return None
    return payload


def new_session(principal: Principal) -> dict[str, Any]:
    """The cookie payload for a principal that just signed in."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "tid": principal.tenant_id,
        "iat": now,
        "exp": now + SESSION_SECONDS,
        "n": secrets.token_urlsafe(16),
    }
    if principal.actor.startswith("key:"):
        payload["sub"] = principal.actor
    else:
        payload["sub"] = ADMIN_SUBJECT
        payload["af"] = _admin_fingerprint()
    return payload


def principal_of(session: Session, payload: dict[str, Any]) -> tuple[Principal, str] | None:
    """The principal behind a session payload and a label for its key, re-checked now:
    None once the key was revoked, the admin key changed, or the scope is missing."""
    sub = payload.get("sub")
    if sub == ADMIN_SUBJECT:
        if not hmac.compare_digest(str(payload.get("af", "")), _admin_fingerprint()):
            return None
        principal = Principal(DEFAULT_TENANT_ID, "admin-key", frozenset({Scope.admin.value}))
        label = "bootstrap admin key"
    elif isinstance(sub, str) and sub.startswith("key:"):
        key = session.get(ApiKey, sub.removeprefix("key:"))
        if key is None or key.revoked_at is not None or key.tenant_id != payload.get("tid"):
            return None
        principal = Principal(key.tenant_id, sub, frozenset(key.scopes))
        label = f"API key “{key.name}” ({key.prefix})"
    else:
        return None
    if not principal.allows(REQUIRED_SCOPE):
        return None
    return principal, label


def viewer_of(request: Request, session: Session) -> Viewer | None:
    """The signed-in viewer of this request, or None."""
    payload = decode_session(request.cookies.get(SESSION_COOKIE))
    if payload is None:
        return None
    found = principal_of(session, payload)
    if found is None:
        return None
    principal, label = found
    tenant = session.get(Tenant, principal.tenant_id)
    return Viewer(
        principal=principal,
        key_label=label,
        tenant_name=tenant.name if tenant else principal.tenant_id,
        csrf_token=_mac(b"csrf", str(payload["n"]).encode()),
        expires_at=int(payload["exp"]),
    )


def sign_in(session: Session, presented: str) -> tuple[Principal | None, str]:
    """The principal for a key typed into the sign-in form, or None and why not."""
    principal = authenticate(session, presented.strip()) if presented.strip() else None
    if principal is None:
        return None, "That API key is not valid (unknown or revoked)."
    if not principal.allows(REQUIRED_SCOPE):
        return None, f"That API key lacks the {REQUIRED_SCOPE!r} scope the dashboard needs."
    return principal, ""


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, payload: dict[str, Any]) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        encode_session(payload),
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )


def clear_cookie(response: Response, request: Request, name: str = SESSION_COOKIE) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, httponly=True, samesite="lax", secure=_secure(request)
    )


# -- CSRF ------------------------------------------------------------------------------


def csrf_ok(viewer: Viewer, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(str(presented), viewer.csrf_token)


def new_login_form() -> tuple[str, str]:
    """A sign-in form's (cookie nonce, form token): the token is bound to a pre-session
    cookie (sign-in CSRF: another site cannot sign a browser in with its own key)."""
    nonce = secrets.token_urlsafe(16)
    return nonce, _mac(b"login", nonce.encode())


def set_login_cookie(response: Response, request: Request, nonce: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_FORM_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )


def login_token_ok(request: Request, presented: str | None) -> bool:
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not presented:
        return False
    return hmac.compare_digest(str(presented), _mac(b"login", nonce.encode()))


def same_origin(request: Request) -> bool:
    """False when the browser says the form was posted from another origin."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None:  # not every client sends it; the CSRF token still has to match
        return True
    if origin == "null":
        return False
    return urlsplit(origin).netloc == request.headers.get("host", request.url.netloc)


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a dashboard path only (no open redirect)."""
    if (
        target
        and target.startswith("/dashboard")
        and not target.startswith("//")
        and "\\" not in target
        and "\r" not in target
        and "\n" not in target
    ):
        return target
    return "/dashboard"
