"""Pretraining of the built-in base on the background population: train the tokenizer, then a
small Llama as a causal LM on whole background dialogues in the chat format, and cache it.

The background population is disjoint from the users the strategies are evaluated on, so the
base learns the world (devices, phrasing, confirmations) but none of the evaluated users.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from personal.data.schema import Dataset, Example, Message, Meta
from personal.data.validate import load_dataset
from personal.errors import PersonalError
from personal.models.base import (FORMAT_VERSION, build_tiny, cache_path, data_fingerprint,
                                  is_cached, quiet_hf, resolve_device)
from personal.models.chat import SYSTEM_PROMPT, encode_dialogue, render_context
from personal.models.tokenizer import train_tokenizer
from personal.models.training import LoopSettings, seed_everything, train_loop

log = logging.getLogger(__name__)

#: Turns that carry loss: user turns too, since predicting them teaches the same world at no
#: extra cost (the forward pass is paid for the whole dialogue anyway).
LABEL_ROLES = ("user", "assistant")
MAX_GRAD_NORM = 1.0
"""Gradient clipping of pretraining (the usual choice for small transformers)."""
HELD_OUT = 0.01
"""Fraction of dialogues held out to report the base's validation loss."""


def dialogues(data: Dataset | Sequence[Example]) -> Iterator[tuple[Meta, list[Message]]]:
    """(meta, messages) of every background dialogue (or of each example's history + target)."""
    if isinstance(data, Dataset):
        for persona in data.personas:
            for session in persona.sessions:
                yield session.meta, session.messages
    else:
        for ex in data:
            yield ex.meta, list(ex.history) + [Message("assistant", ex.target)]


def corpus(data: Dataset | Sequence[Example]) -> Iterator[str]:
    """Texts the tokenizer learns from: everything a prompt can contain."""
    yield SYSTEM_PROMPT
    if isinstance(data, Dataset):
        yield from (p.character for p in data.personas if p.character)
    for meta, messages in dialogues(data):
        yield render_context(meta)
        yield from (m.text for m in messages)


def pretrain_settings(cfg: Any) -> LoopSettings:
    """The loop settings of pretraining (cosine decay, no early stopping)."""
    p = cfg.pretrain
    return LoopSettings(lr=p.lr, epochs=p.epochs, batch_size=p.batch_size,
                        warmup_frac=p.warmup_frac, weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM,
                        seed=p.seed, decay="cosine")


def pretrain_base(cfg: Any, background: Dataset | Sequence[Example] | str | Path,
                  progress: bool = True, force: bool = False) -> Path:
    """Pretrain the built-in base on `background` (a Dataset, examples, or a folder in the
    canonical layout) and cache it under `model.cache_dir/tiny-<key>/` (model, tokenizer,
    meta.json); returns that folder. An existing cache for the same config and data is
    returned as is unless `force`."""
    fingerprint = data_fingerprint(background)
    final = cache_path(cfg, fingerprint)
    if is_cached(final) and not force:
        log.info("built-in base already cached at %s", final)
        return final
    if isinstance(background, (str, Path)):
        background = load_dataset(background)
    empty = not background.personas if isinstance(background, Dataset) else not background
    if empty:
        raise PersonalError("no background data to pretrain the built-in base on")
    start = time.perf_counter()
    seed_everything(cfg.pretrain.seed)
    tokenizer = train_tokenizer(corpus(background), cfg.model.vocab_size)
    features = [seq for meta, messages in dialogues(background)
                for seq in encode_dialogue(tokenizer, meta, messages, cfg.model.max_seq_len,
                                           LABEL_ROLES)]
    train, val = _hold_out(features, cfg.pretrain.seed)
    log.info("pretraining the built-in base: %d sequences, %d tokens, vocabulary %d, into %s",
             len(features), sum(len(f["input_ids"]) for f in features), len(tokenizer), final)
    model = build_tiny(cfg.model, tokenizer, cfg.pretrain.seed).to(resolve_device(cfg.model.device))
    result = train_loop(model, train, val, pretrain_settings(cfg), tokenizer.pad_token_id,
                        progress=progress, desc="pretrain base")
    meta = {"config": {"model": dataclasses.asdict(cfg.model),
                       "pretrain": dataclasses.asdict(cfg.pretrain)},
            "data_fingerprint": fingerprint, "format": FORMAT_VERSION,
            "sequences": len(features), "tokens": sum(len(f["input_ids"]) for f in features),
            "vocab_size": len(tokenizer), "steps": result.steps,
            "val_losses": result.val_losses, "final_train_loss": result.train_losses[-1][1],
            "seconds": round(time.perf_counter() - start, 1)}
    _save(model, tokenizer, meta, final)
    log.info("built-in base cached at %s (held-out loss %.3f -> %.3f, %.0f s)", final,
             result.val_losses[0][1] if result.val_losses else float("nan"),
             result.best_val_loss if result.best_val_loss is not None else float("nan"),
             meta["seconds"])
    return final


def _hold_out(features: list, seed: int) -> tuple[list, list]:
    """Split off a few sequences (seeded) to measure the base's loss on unseen dialogues."""
    if len(features) < 20:
        return features, []
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(features), generator=gen).tolist()
    n_val = max(1, int(len(features) * HELD_OUT))
    return [features[i] for i in order[n_val:]], [features[i] for i in order[:n_val]]


def _save(model, tokenizer, meta: dict, final: Path) -> None:
    """Write into a temporary folder and rename, so a crash never leaves a half cache."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_hf():
        model.to("cpu").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
