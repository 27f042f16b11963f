"""Signed unlearning certificates: canonical JSON signed with Ed25519, verifiable offline
with the public key alone. Keys live as PEM files in a directory; the newest is used for
signing and every key ever used stays available for verification."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

CERTIFICATE_FORMAT = "lethe.certificate/v1"


def canonical(document: dict[str, Any]) -> str:
    """The exact text that is signed: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


def load_or_create_signing_key(keys_dir: Path) -> SigningKey:
    """The newest ``signing-*.pem`` in ``keys_dir``, created on first use (mode 0600)."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(keys_dir.glob("signing-*.pem"), key=lambda p: p.stat().st_mtime)
    if existing:
        private = serialization.load_pem_private_key(existing[-1].read_bytes(), password=None)
        assert isinstance(private, Ed25519PrivateKey)
        return SigningKey(key_id_of(private.public_key()), private)
    private = Ed25519PrivateKey.generate()
    kid = key_id_of(private.public_key())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(keys_dir / f"signing-{kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return SigningKey(kid, private)


def rotate_signing_key(keys_dir: Path) -> SigningKey:
    """Create a new signing key; it signs from now on, the old ones stay for verifying."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    kid = key_id_of(private.public_key())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = keys_dir / f"signing-{kid}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    # newest by modification time signs; make sure it is strictly the newest
    newest = max((p.stat().st_mtime for p in keys_dir.glob("signing-*.pem")), default=0)
    os.utime(path, (newest + 1, newest + 1))
    return SigningKey(kid, private)


def public_keys(keys_dir: Path) -> dict[str, str]:
    """Every signing key's public half, PEM, by key id (retired keys included)."""
    out = {}
    for path in sorted(keys_dir.glob("signing-*.pem")):
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(private, Ed25519PrivateKey)
        pub = private.public_key()
        out[key_id_of(pub)] = pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    return out


def sign(document: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """A certificate envelope: the canonical document text, its signature and key."""
    text = canonical({**document, "format": CERTIFICATE_FORMAT, "signing_key_id": key.key_id})
    signature = base64.b64encode(key.private.sign(text.encode())).decode()
    return {
        "document": text,
        "signature": signature,
        "key_id": key.key_id,
        "public_key": key.public_pem,
    }


def verify(envelope: dict[str, Any], trusted: dict[str, str] | None = None) -> tuple[bool, str]:
    """Check an envelope's signature. With ``trusted`` (key id → PEM) only those keys are
    accepted; without, the envelope's own public key is used and its id must match."""
    try:
        text = envelope["document"]
        signature = base64.b64decode(envelope["signature"], validate=True)
        kid = envelope["key_id"]
    except (KeyError, TypeError, ValueError) as exc:
        return False, f"malformed certificate: {exc}"
    pem = (trusted or {}).get(kid) if trusted is not None else envelope.get("public_key")
    if not pem:
        return False, f"unknown signing key {kid}"
    public = serialization.load_pem_public_key(pem.encode())
    if not isinstance(public, Ed25519PublicKey) or key_id_of(public) != kid:
        return False, f"public key does not match key id {kid}"
    try:
        public.verify(signature, text.encode())
    except InvalidSignature:
        return False, "signature does not match the document"
    try:
        doc = json.loads(text)
    except ValueError:
        return False, "document is not JSON"
    if doc.get("signing_key_id") != kid:
        return False, "document names another signing key"
    return True, "valid"
