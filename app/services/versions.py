"""Loading published versions, and compacting long adapter chains.

Each job adds one adapter, so a version's chain grows by one per erasure batch and load
time with it. Past ``LETHE_MAX_ADAPTER_CHAIN`` adapters the parent is merged once into a
stored checkpoint; later versions start from it. The version's content (and its lineage of
adapter hashes in certificates) is unchanged, only how it is stored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import update

from app.db.models import Model, ModelVersion
from app.db.session import session_scope
from app.settings import get_settings

log = logging.getLogger("lethe.versions")


def weights_of(model: Model, version: ModelVersion) -> str:
    return version.weights_path or model.base_path


def load(model: Model, version: ModelVersion) -> tuple[Any, Any]:
    """(model, tokenizer) of a version: its weights plus its adapter chain, merged."""
    from workers.engine.versions import load_version

    return load_version(
        weights_of(model, version), version.adapter_chain, device=get_settings().device
    )


def compact_if_long(model: Model, version: ModelVersion, loaded: Any, tokenizer: Any) -> None:
    """Store ``loaded`` (the merged weights of ``version``) as a checkpoint when its chain
    is longer than allowed, and make the version start from it. Idempotent."""
    limit = get_settings().max_adapter_chain
    if len(version.adapter_chain) <= limit:
        return
    from workers.engine.versions import model_fingerprint

    out = (get_settings().data_dir / "checkpoints" / model.id / version.id).resolve()
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".partial")
        loaded.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)  # appears whole or not at all
    digest = model_fingerprint(out)
    with session_scope() as session:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == version.id)
            .values(weights_path=str(out), adapter_chain=[])
        )
    log.info(
        "compacted version %s (%d adapters) into %s (sha256 %s)",
        version.number,
        len(version.adapter_chain),
        Path(out).name,
        digest[:12],
    )
    version.weights_path, version.adapter_chain = str(out), []
