"""Model versions: a version is a base Hugging Face checkpoint plus an ordered chain of
LoRA adapters (one per published erasure). Loading a version merges each adapter into
the weights in turn, so callers get a plain ``transformers`` model that is exactly
"base + chain" and needs no ``peft`` at inference time.

Also the content hashes that identify versions and artefacts in the registry: they are
stable over time and machines (sorted relative names, raw bytes), never over mtimes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# Weight files that define a checkpoint's numbers; configs and tokenizers are excluded so
# that re-saving a tokenizer or editing a README does not change a model's identity.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")

_CHUNK = 1 << 20  # read files in 1 MiB pieces so hashing a 10 GB shard stays flat in memory


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` means CUDA when present, else CPU; anything else is taken literally.

    Checked at call time (never at import) so that importing the engine on a CPU-only
    worker does not touch CUDA.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(device: torch.device, dtype: torch.dtype | str | None = None) -> torch.dtype:
    """The weights' dtype: bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow and
    unlearning's small log-likelihood differences need fp32), unless given."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_version(
    base_path: str | Path,
    adapter_paths: Sequence[str | Path] = (),
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> tuple[Any, Any]:
    """Load the base checkpoint, apply the LoRA adapters in order, return ``(model, tokenizer)``.

    Each adapter was trained on top of the merged model of everything before it, so it is
    loaded onto that merged model and merged in turn (``merge_and_unload``) before the next
    one. The result is a plain ``PreTrainedModel`` in eval mode on ``device`` with weights
    in ``dtype`` (see :func:`resolve_dtype`). ``device="auto"`` picks CUDA with bf16 when
    available.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dt)
    model.to(dev)  # type: ignore[arg-type]  # transformers types the wrapped .to oddly
    if adapter_paths:
        from peft import PeftModel

        for path in adapter_paths:
            peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
            model = peft_model.merge_and_unload()
            # the adapter was fp32 (peft's autocast); keep the merged model in one dtype
            model.to(dtype=dt)
    model.eval()
    return model, tokenizer


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_files(root: Path, files: Sequence[Path]) -> str:
    # Each entry contributes its relative POSIX name and its content hash, length-framed,
    # so that moving bytes between files or renaming a file always changes the digest.
    digest = hashlib.sha256()
    for rel in sorted(f.relative_to(root).as_posix() for f in files):
        name = rel.encode("utf-8")
        digest.update(len(name).to_bytes(8, "big"))
        digest.update(name)
        digest.update(bytes.fromhex(sha256_file(root / rel)))
    return digest.hexdigest()


def sha256_dir(path: str | Path) -> str:
    """Hex SHA-256 over every regular file under ``path`` (recursively), by sorted relative
    name and content; independent of mtimes, permissions and listing order."""
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    return _hash_files(root, [p for p in root.rglob("*") if p.is_file()])


def model_fingerprint(path: str | Path) -> str:
    """Hex SHA-256 identifying a checkpoint's weights: over its weight files only
    (``*.safetensors``, ``*.bin``, ...) in a directory, or over the file itself."""
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    weights = [p for p in root.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        raise FileNotFoundError(f"no weight files under {root}")
    return _hash_files(root, weights)
