"""Model versions: content hashes and loading base + a chain of merged LoRA adapters."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from workers.engine.qa import PromptTemplate, encode, examples_from_rows, load_jsonl
from workers.engine.versions import (
    load_version,
    model_fingerprint,
    resolve_device,
    resolve_dtype,
    sha256_dir,
    sha256_file,
)


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_sha256_dir_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    files = {"b.txt": b"two", "a/x.bin": b"one", "a/y.bin": b""}
    first = sha256_dir(_tree(tmp_path / "1", files))
    # same content written in another order, later, elsewhere: same digest
    second = sha256_dir(_tree(tmp_path / "2", dict(reversed(list(files.items())))))
    os.utime(tmp_path / "2" / "b.txt", (0, 0))
    assert first == second == sha256_dir(tmp_path / "2")
    assert len(first) == 64

    renamed = sha256_dir(_tree(tmp_path / "3", {"c.txt": b"two", "a/x.bin": b"one",
                                               "a/y.bin": b""}))
    changed = sha256_dir(_tree(tmp_path / "4", {**files, "b.txt": b"tw0"}))
    # bytes moved from one file to another must not collide
    moved = sha256_dir(_tree(tmp_path / "5", {"b.txt": b"tw", "a/x.bin": b"oone",
                                             "a/y.bin": b""}))
    assert len({first, renamed, changed, moved}) == 4
    with pytest.raises(NotADirectoryError):
        sha256_dir(tmp_path / "1" / "b.txt")


def test_model_fingerprint_covers_weights_only(tmp_path: Path) -> None:
    root = _tree(tmp_path / "m", {"model.safetensors": b"w", "config.json": b"{}"})
    fp = model_fingerprint(root)
    (root / "config.json").write_text('{"edited": true}')
    (root / "README.md").write_text("notes")
    assert model_fingerprint(root) == fp
    (root / "model.safetensors").write_bytes(b"w2")
    assert model_fingerprint(root) != fp
    assert model_fingerprint(root / "model.safetensors") == sha256_file(root / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        model_fingerprint(_tree(tmp_path / "empty", {"config.json": b"{}"}))


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16


def test_demo_model_fingerprint_is_reproducible(demo_model_dir: Path) -> None:
    assert model_fingerprint(demo_model_dir) == model_fingerprint(demo_model_dir)
    assert sha256_dir(demo_model_dir) == sha256_dir(demo_model_dir)


def _random_adapter(model, out: Path, seed: int, scale: float = 0.02) -> None:
    """Save a LoRA adapter with small random A and B onto ``model`` (restored afterwards)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * scale)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    peft_model.unload()


def test_load_version_merges_an_adapter_chain(demo_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base, tok = load_version(demo_model_dir)
    assert not base.training
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    _random_adapter(base, tmp_path / "a1", seed=1)
    _random_adapter(base, tmp_path / "a2", seed=2)
    # unload() must have given the base back untouched
    assert all(torch.equal(base_state[k], v) for k, v in base.state_dict().items())

    chained, _ = load_version(demo_model_dir, [tmp_path / "a1", str(tmp_path / "a2")])
    assert type(chained).__name__ == "LlamaForCausalLM"  # plain model, no peft wrapper
    assert not any("lora" in k for k in chained.state_dict())

    # independent expectation: W + (alpha/r)·B·A for each adapter in turn
    expected = dict(base_state)
    for adapter in ("a1", "a2"):
        weights = load_file(str(tmp_path / adapter / "adapter_model.safetensors"))
        for key, a in weights.items():
            if ".lora_A." not in key:
                continue
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            target = key.split("base_model.model.", 1)[1].replace(".lora_A.weight", ".weight")
            expected[target] = expected[target] + (8 / 4) * b @ a
    got = chained.state_dict()
    changed = 0
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
        changed += not torch.equal(value, base_state[key])
    assert changed == 2 * 3  # 2 layers × 3 target modules (each touched by both adapters)

    manifest = json.loads((demo_model_dir / "lethe-demo.json").read_text())
    template = PromptTemplate(manifest["template"])
    rows = load_jsonl(demo_model_dir / "data" / "train.jsonl")[:4]
    batch = encode(tok, examples_from_rows(rows, template))
    with torch.no_grad():
        a = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = chained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(a, b)
