"""Personal data handling: forget payloads are encrypted at rest (AES-256-GCM, the row id
as associated data so a ciphertext cannot be moved to another row), subject ids are kept
only as keyed hashes, and each forget item is fingerprinted for the certificate."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.settings import get_settings

_FORMAT = b"\x01"  # ciphertext layout version: 1 byte format, 12 bytes nonce, sealed box


def _key(purpose: bytes) -> bytes:
    # separate subkeys per purpose, derived from the one configured secret
    return hmac.new(get_settings().resolved_secret_key(), purpose, hashlib.sha256).digest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encrypt_items(items: list[dict[str, Any]], row_id: str) -> bytes:
    nonce = os.urandom(12)
    sealed = AESGCM(_key(b"lethe/forget-payload")).encrypt(
        nonce, canonical_json(items), row_id.encode()
    )
    return _FORMAT + nonce + sealed


def decrypt_items(blob: bytes, row_id: str) -> list[dict[str, Any]]:
    if blob[:1] != _FORMAT:
        raise ValueError("unknown ciphertext format")
    plain = AESGCM(_key(b"lethe/forget-payload")).decrypt(blob[1:13], blob[13:], row_id.encode())
    result: list[dict[str, Any]] = json.loads(plain)
    return result


def subject_hash(subject_id: str) -> str:
    """HMAC-SHA256 of the caller's subject id: stable for lookups, useless without the key."""
    return hmac.new(_key(b"lethe/subject-id"), subject_id.encode(), hashlib.sha256).hexdigest()


def item_digest(item: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(item)).hexdigest()
