"""Lethe's settings: environment variables prefixed ``LETHE_`` (pydantic-settings)."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED = "embedded"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(default=Path("lethe-data"), description="models, adapters, keys")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty means a SQLite file in data_dir"
    )
    broker_url: str = Field(
        default=EMBEDDED, description="Redis URL for Celery, or 'embedded' (in-process worker)"
    )
    admin_key: str | None = Field(default=None, description="bootstrap API key (Bearer)")
    secret_key: str | None = Field(
        default=None,
        description="base64 32-byte key: encrypts forget payloads, keys subject-id hashes",
    )
    previous_secret_keys: str = Field(
        default="", description="comma-separated former LETHE_SECRET_KEYs, for decryption"
    )
    subject_hash_key: str | None = Field(
        default=None, description="base64 key for subject-id hashes (default: the secret)"
    )
    # Celery: the visibility timeout must exceed the task time limit, or Redis hands a
    # long-running job to a second worker while the first still holds it.
    task_time_limit_s: int = 3 * 3600
    visibility_timeout_s: int = 4 * 3600
    # A stage whose worker stopped writing heartbeats for this long is run again.
    job_lease_s: float = 120.0
    maintenance_interval_s: float = 5.0
    max_adapter_chain: int = Field(
        default=4, description="merge a version into a checkpoint past this many adapters"
    )
    # ten people per job converged on the small demo model, fifty did not (their facts
    # crowd each other out): docs/benchmarks.md, "Cost per erased person by batch size"
    max_batch_size: int = Field(default=10, description="requests per unlearning job at most")
    batch_max_wait_s: float = Field(
        default=0.0, description="hold a partial batch this long for more requests (0: never)"
    )
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'")
    generation_max_new_tokens: int = 64
    worker_metrics_port: int = Field(
        default=0, description="Prometheus port of `lethe worker` (0: none)"
    )
    db_null_pool: bool = Field(
        default=False, description="no connection pool (set by `lethe worker`, which forks)"
    )
    json_logs: bool = Field(default=True, description="one JSON object per log line")
    max_body_bytes: int = Field(default=1_048_576, description="413 above this")
    rate_limit: str = Field(default="1200/minute", description="per API key (limits syntax)")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lethe.sqlite3').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url == EMBEDDED

    def ensure_dirs(self) -> None:
        for sub in ("models", "adapters", "keys"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)

    def _dev_secret(self, name: str, make: Callable[[], str]) -> str:
        """Development only: a secret generated once and kept in data_dir (mode 0600)."""
        if self.environment == "production":
            raise RuntimeError(f"LETHE_{name.upper()} must be set in production")
        self.ensure_dirs()
        path = self.data_dir / "keys" / f"{name}.txt"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(make())
        return path.read_text().strip()

    def resolved_admin_key(self) -> str:
        return self.admin_key or self._dev_secret("admin_key", lambda: secrets.token_urlsafe(32))

    def previous_secret_keys_bytes(self) -> list[bytes]:
        return [base64.b64decode(k) for k in self.previous_secret_keys.split(",") if k.strip()]

    def subject_hash_key_bytes(self) -> bytes | None:
        return base64.b64decode(self.subject_hash_key) if self.subject_hash_key else None

    def resolved_secret_key(self) -> bytes:
        raw = self.secret_key or self._dev_secret(
            "secret_key", lambda: base64.b64encode(secrets.token_bytes(32)).decode()
        )
        key = base64.b64decode(raw)
        if len(key) != 32:
            raise RuntimeError("LETHE_SECRET_KEY must be 32 bytes, base64-encoded")
        return key


@lru_cache
def get_settings() -> Settings:
    return Settings()
