"""Personal data handling.

* Forget payloads (and webhook secrets) are encrypted at rest with AES-256-GCM, the row
  id as associated data so a ciphertext cannot be moved to another row. Each ciphertext
  names the key that sealed it, so keys rotate: set a new ``LETHE_SECRET_KEY``, list the
  old one in ``LETHE_PREVIOUS_SECRET_KEYS``, run ``lethe admin rotate-keys``, then drop it.
* Subject ids are kept only as keyed hashes (HMAC-SHA256), keyed by
  ``LETHE_SUBJECT_HASH_KEY`` when set (keep it across rotations for stable hashes), else
  by the current secret.
* Each forget item is fingerprinted (SHA-256) for the certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.settings import get_settings

_FORMAT = b"\x01"  # layout: 1 byte format, 8 bytes key id, 12 bytes nonce, sealed box
_PAYLOAD = b"lethe/forget-payload"


def _subkey(secret: bytes, purpose: bytes) -> bytes:
    return hmac.new(secret, purpose, hashlib.sha256).digest()


def key_id(secret: bytes) -> bytes:
    return hashlib.sha256(b"lethe/key-id" + secret).digest()[:8]


def _keyring() -> dict[bytes, bytes]:
    """Key id → payload key, for the current and every previous secret."""
    settings = get_settings()
    secrets = [settings.resolved_secret_key(), *settings.previous_secret_keys_bytes()]
    return {key_id(s): _subkey(s, _PAYLOAD) for s in secrets}


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@lru_cache(maxsize=8)
def _sealer(secret: bytes) -> tuple[bytes, AESGCM]:
    """Key id and cipher of a secret, derived once rather than on every request."""
    return key_id(secret), AESGCM(_subkey(secret, _PAYLOAD))


def encrypt_items(items: list[dict[str, Any]], row_id: str) -> bytes:
    kid, cipher = _sealer(get_settings().resolved_secret_key())
    nonce = os.urandom(12)
    sealed = cipher.encrypt(nonce, canonical_json(items), row_id.encode())
    return _FORMAT + kid + nonce + sealed


def sealed_with_current_key(blob: bytes) -> bool:
    return blob[1:9] == key_id(get_settings().resolved_secret_key())


def decrypt_items(blob: bytes, row_id: str) -> list[dict[str, Any]]:
    if blob[:1] != _FORMAT:
        raise ValueError("unknown ciphertext format")
    key = _keyring().get(blob[1:9])
    if key is None:
        raise ValueError("sealed with a key that is no longer configured")
    plain = AESGCM(key).decrypt(blob[9:21], blob[21:], row_id.encode())
    result: list[dict[str, Any]] = json.loads(plain)
    return result


def subject_hash(subject_id: str) -> str:
    """HMAC-SHA256 of the caller's subject id: stable for lookups, useless without the key."""
    settings = get_settings()
    secret = settings.subject_hash_key_bytes() or settings.resolved_secret_key()
    return hmac.new(_subject_key(secret), subject_id.encode(), hashlib.sha256).hexdigest()


@lru_cache(maxsize=8)
def _subject_key(secret: bytes) -> bytes:
    return _subkey(secret, b"lethe/subject-id")


# the fact an item states; paraphrases and perturbed answers supplied with it are evidence
# for verification, not part of its identity
DIGEST_FIELDS = ("question", "answer", "text")


def item_digest(item: dict[str, Any]) -> str:
    """sha256 of the fact an item states (its question and answer, or its text)."""
    fact = {k: item[k] for k in DIGEST_FIELDS if k in item}
    return hashlib.sha256(canonical_json(fact)).hexdigest()


def rotate_ciphertexts() -> int:
    """Re-seal every stored ciphertext under the current key; returns how many changed."""
    from sqlalchemy import select

    from app.db.models import ErasureRequest, WebhookEndpoint
    from app.db.session import session_scope

    changed = 0
    with session_scope() as session:
        for request in session.scalars(
            select(ErasureRequest).where(ErasureRequest.forget_ciphertext.is_not(None))
        ):
            assert request.forget_ciphertext is not None
            if not sealed_with_current_key(request.forget_ciphertext):
                items = decrypt_items(request.forget_ciphertext, request.id)
                request.forget_ciphertext = encrypt_items(items, request.id)
                changed += 1
        for endpoint in session.scalars(select(WebhookEndpoint)):
            if not sealed_with_current_key(endpoint.secret_ciphertext):
                items = decrypt_items(endpoint.secret_ciphertext, endpoint.id)
                endpoint.secret_ciphertext = encrypt_items(items, endpoint.id)
                changed += 1
    return changed
