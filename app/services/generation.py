"""Serving the ``production`` version of a model: loaded once per version and kept while
it stays in production, so generation reflects every published erasure."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.services import registry, versions


@dataclass
class Generated:
    text: str
    version_id: str
    version_number: int


_cache: dict[str, tuple[str, Any, Any]] = {}  # model id → (version id, model, tokenizer)
_lock = threading.Lock()


def generate(
    session: Session,
    tenant_id: str,
    model_name: str,
    *,
    prompt: str | None,
    question: str | None,
    max_new_tokens: int,
) -> Generated:
    from workers.engine.qa import PromptTemplate, greedy_generate

    model = registry.get_model(session, tenant_id, model_name)
    version = registry.production_version(session, model)
    with _lock:  # one generation at a time per process: CPU-bound, and the cache mutates
        cached = _cache.get(model.id)
        if cached is None or cached[0] != version.id:
            _cache.pop(model.id, None)
            lm, tokenizer = versions.load(model, version)
            cached = (version.id, lm, tokenizer)
            _cache[model.id] = cached
        _, lm, tokenizer = cached
        if question is not None:
            prompt = PromptTemplate(model.prompt_template, tokenizer).prompt(question)
        assert prompt is not None
        text = greedy_generate(lm, tokenizer, [prompt], max_new_tokens=max_new_tokens)[0]
    return Generated(text=text, version_id=version.id, version_number=version.number)
