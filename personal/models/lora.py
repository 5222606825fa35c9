"""Training one LoRA adapter (peft) on a list of examples through the one training core
(`models.training.train_loop`): AdamW, warmup + linear decay, gradient clipping, early
stopping on validation loss (best weights restored), fixed seed.

    result = train_lora(base, tokenizer, train_examples, val_examples, cfg.lora, cfg.train,
                        out_dir="runs/x/adapters/unified", fmt=PromptFormat.from_config(cfg))
    texts = generate(result.model, tokenizer, test_examples, cfg.generation, fmt=fmt)

The base model passed in is left untouched: the adapter is attached to a copy.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import peft
import torch

from personal.config import Config
from personal.data.schema import Example
from personal.errors import PersonalError
from personal.models.chat import PromptFormat
from personal.models.core import Collective, LossTerm
from personal.models.training import LoopSettings, seed_everything, train_loop


@dataclass
class TrainResult:
    """What adapter training produced: the adapted model and its learning curve."""

    model: Any = field(repr=False)
    """The base with the trained adapter attached (a peft PeftModel), best weights restored."""
    train_losses: list[tuple[int, float]]
    """(step, training loss of that step's batch)."""
    val_losses: list[tuple[int, float]]
    """(step, validation loss); step 0 is the untrained adapter (= the base)."""
    best_val_loss: Optional[float]
    best_step: int
    steps: int
    examples_seen: int
    stopped_early: bool
    seconds: float
    adapter_dir: Optional[str] = None
    term_losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """(step, value) of each loss term (`models.core.LossTerm`), unweighted."""

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, for JSON."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "model"}


def peft_config(lora_cfg: Any) -> peft.LoraConfig:
    """peft's LoraConfig from ours."""
    return peft.LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha,
                           lora_dropout=lora_cfg.dropout,
                           target_modules=list(lora_cfg.target_modules), bias="none",
                           task_type="CAUSAL_LM")


def attach_lora(model: torch.nn.Module, lora_cfg: Any) -> peft.PeftModel:
    """A copy of `model` with a fresh LoRA adapter (initialised from torch's current seed)."""
    try:
        return peft.get_peft_model(copy.deepcopy(model), peft_config(lora_cfg))
    except ValueError as err:
        raise PersonalError(f"lora.target_modules={list(lora_cfg.target_modules)}: {err}") from None


def train_settings(train_cfg: Any) -> Any:
    """Loop settings from TrainConfig (linear decay, early stopping)."""
    t = train_cfg
    return LoopSettings(lr=t.lr, epochs=t.epochs, batch_size=t.batch_size,
                        warmup_frac=t.warmup_frac, weight_decay=t.weight_decay,
                        max_grad_norm=t.max_grad_norm, seed=t.seed, decay="linear",
                        max_steps=t.max_steps, eval_every=t.eval_every, patience=t.patience,
                        min_steps=getattr(t, "min_steps", 0))


def train_lora(model: torch.nn.Module, tokenizer: Any, train_examples: Sequence[Example],
               val_examples: Sequence[Example], lora_cfg: Any, train_cfg: Any,
               out_dir: str | Path | None = None, progress: bool = True, *,
               fmt: Optional[PromptFormat] = None,
               start: Optional[Callable[[], peft.PeftModel]] = None,
               desc: str = "train adapter", terms: Optional[Sequence[LossTerm]] = None,
               group_lrs: Optional[dict[str, float]] = None,
               coll: Optional[Collective] = None, **loop_options: Any) -> TrainResult:
    """Train one LoRA adapter on `train_examples` (loss on target turns only), early-stopping
    on the loss of `val_examples`. The same seed gives the same adapter on CPU. With
    `out_dir`, save a standard peft adapter folder there (plus training.json; worker 0 only
    when data-parallel). `start` builds the adapter to continue (called after seeding); None
    attaches a fresh one. `terms`: the loss terms (default: the LM loss alone);
    `group_lrs`: lr per parameter group (`models.core.default_group`), the others at
    `train_cfg.lr`. `coll` and `loop_options` (resume, on_check, stop_after, stepper) go to
    `models.training.train_loop`: the same training on `coll.world` workers."""
    coll = coll or Collective()
    adapted, train, val = prepare_training(model, tokenizer, train_examples, val_examples,
                                           lora_cfg, train_cfg, fmt or _default_format(),
                                           start)
    settings = dataclasses.replace(train_settings(train_cfg), group_lrs=group_lrs)
    loop = train_loop(adapted, train, val, settings, pad_id(tokenizer), progress=progress,
                      desc=desc, terms=terms, coll=coll, **loop_options)
    adapted.eval()
    result = TrainResult(model=adapted, **dataclasses.asdict(loop))
    if out_dir is not None and coll.rank == 0:
        result.adapter_dir = str(save_adapter(adapted, out_dir, result))
    return result


def prepare_training(model: torch.nn.Module, tokenizer: Any, train_examples: Sequence[Example],
                     val_examples: Sequence[Example], lora_cfg: Any, train_cfg: Any,
                     fmt: PromptFormat, start: Optional[Callable[[], peft.PeftModel]] = None
                     ) -> tuple[peft.PeftModel, list, list]:
    """(adapted copy of `model`, encoded training examples, encoded validation sample): the
    start every LoRA training loop shares, single-process or data-parallel, so both train
    the same adapter from the same seed on the same validation sample."""
    if not train_examples:
        raise PersonalError("LoRA training: no training examples")
    seed_everything(train_cfg.seed)
    adapted = start() if start is not None else attach_lora(model, lora_cfg)
    train = fmt.encode_training(tokenizer, train_examples, train_cfg.pack_sessions)
    val = [fmt.encode(tokenizer, ex) for ex in spread_sample(val_examples,
                                                              train_cfg.max_val_examples)]
    return adapted, train, val


def spread_sample(items: Sequence[Any], limit: int) -> list[Any]:
    """At most `limit` items, evenly spread over the sequence (all when limit is 0): every
    user keeps a share of a validation set ordered by user."""
    if not limit or len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def save_adapter(model: peft.PeftModel, out_dir: str | Path, result: TrainResult) -> Path:
    """Standard peft adapter folder (adapter_config.json + weights) and training.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    (out / "training.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return out


def merged_for_inference(model: peft.PeftModel) -> torch.nn.Module:
    """The adapter folded into the base weights (W + scale * B A), in place, for generation
    only: one matmul per projection instead of three saves ~20% of a prefill on the built-in
    base. Pass a copy you own; the result is no longer a PeftModel and cannot be trained."""
    return model.merge_and_unload().eval()


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the pad token, else the end-of-sequence token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise PersonalError("the tokenizer has neither a pad nor an eos token")
    return pad


def _default_format() -> PromptFormat:
    # The config's defaults are the single source: no second copy of them here.
    return PromptFormat.from_config(Config())
