"""A seconds-sized world for smoke runs and tests of the Ray layer: a few simulated users and
a tiny random Llama saved as a local Hugging Face folder (its tokenizer trained on the data).

A saved folder, not the built-in pretrained base: Ray workers are separate processes that
load the base from disk, and a random base needs no pretraining.

    cfg = smoke_config("/tmp/world", users=4, sessions=6)
    run_experiment(cfg, "/tmp/world/run", ["unified_lora"])
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from personal.config import Config, apply_override
from personal.data.synth import write_synth
from personal.data.validate import load_dataset
from personal.models.base import build_tiny
from personal.models.tokenizer import train_tokenizer

SMOKE_MODEL = ("model.hidden_size=32", "model.num_layers=2", "model.num_heads=4",
               "model.intermediate_size=64", "model.vocab_size=512", "model.max_seq_len=256")
SMOKE_TRAIN = ("train.lr=1e-2", "train.epochs=1", "train.max_steps=6", "train.batch_size=8",
               "train.eval_every=3", "train.patience=0", "lora.rank=4", "lora.alpha=8",
               "lora.dropout=0.0", "generation.max_new_tokens=12", "generation.batch_size=32",
               "eval.bootstrap=50")


def write_tiny_base(out: str | Path, texts: Sequence[str], cfg: Config, seed: int = 0) -> Path:
    """A random tiny Llama + byte-level BPE tokenizer (with chat template) saved in `out`.
    Embeddings get a wider init than 0.02 so the tied output head is not flat (a flat frozen
    head is something no adapter can sharpen)."""
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    tok = train_tokenizer(texts, cfg.model.vocab_size)
    model = build_tiny(cfg.model, tok, seed=seed)
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=0.3)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.replace(out)  # whole folder or nothing: workers never see half a base
    return out


def smoke_config(root: str | Path, users: int = 4, sessions: int = 6, seed: int = 0,
                 overrides: Sequence[str] = ()) -> Config:
    """Config of a smoke world under `root`: simulated data in `root/data`, a tiny random base
    in `root/base`, a few training steps; `overrides` (dotted) are applied last."""
    root = Path(root).resolve()
    cfg = Config()
    for item in (f"data.path={root / 'data'}", f"data.users={users}",
                 f"data.sessions={sessions}", f"data.seed={seed}", "data.simulate=true",
                 *SMOKE_MODEL, *SMOKE_TRAIN):
        cfg = apply_override(cfg, item)
    data = root / "data"
    if not (data / "sessions.jsonl").is_file():
        write_synth(data, users=users, sessions=sessions, seed=seed)
    ds = load_dataset(data)
    texts = [m.text for p in ds.personas for s in p.sessions for m in s.messages]
    base = write_tiny_base(root / "base", texts, cfg, seed=seed)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, base=str(base)))
    for item in overrides:
        cfg = apply_override(cfg, item)
    return cfg
