"""multitask_lora: the unified adapter trained with auxiliary heads on the model's hidden state
at the user's turn (the study's Strategy 6): who the user is, which devices the turn sets
(multi-label) and the numeric parameters it sets (regression, masked to those it sets).

    loss = 1.0 L_gen + w_persona L_persona + w_device L_device + w_param L_param

The study's weights are 0.1 (persona) and 0.05 (device); the parameter head's, not given by
the study, is 0.05 here (its targets are scaled to [0, 1] by each parameter's range, so its
MSE is of the device head's BCE's size). The hidden state read is the last layer's at the
position that predicts the assistant turn's first token. Gold labels come from the turn's
`actions` when every trained turn has them, else from the action parser on the training
text; the record says which. The heads train with the LoRA and are dropped at export: the
adapter folder is a plain peft LoRA. Their accuracy on validation turns, beside their
accuracy on training turns (a head perfect on train and at chance on validation memorises),
is a row of the report's strategy checks; the study judges by the generation metrics.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from personal.data.schema import DEVICES, IntParam
from personal.errors import PersonalError
from personal.eval.parser import parse_actions
from personal.strategies.keys import training_inputs
from personal.strategies.registry import Unit, register_strategy, servable
from personal.strategies.routes import Route, fixed_routes

NAME = "multitask_lora"
ADAPTER = f"adapters/{NAME}"
DIAGNOSTICS = f"diagnostics/{NAME}.json"
WHERE = f"strategy.{NAME}"
DEVICE_NAMES = tuple(DEVICES)
#: The numeric parameters the regression head predicts, (device, parameter, range).
NUMERIC = tuple((d, p, spec) for d, params in DEVICES.items() for p, spec in params.items()
                if isinstance(spec, IntParam))
HEADS = ("persona", "device", "param")


@dataclass
class MultitaskConfig:
    """Auxiliary heads while training the unified adapter (schedule from `train`)."""

    w_persona: float = 0.1
    """Weight of the persona head's cross-entropy (the study: 0.1)."""
    w_device: float = 0.05
    """Weight of the devices head's binary cross-entropy (the study: 0.05)."""
    w_param: float = 0.05
    """Weight of the numeric parameters' masked MSE on [0, 1]-scaled values (this project's
    choice; the study gives none)."""
    heads: str = "persona,device,param"
    """Comma-separated heads to train, of: persona, device, param."""

    def __post_init__(self) -> None:  # at config time: a bad option stops before any work
        for name in ("w_persona", "w_device", "w_param"):
            if not getattr(self, name) >= 0:
                raise PersonalError(f"{WHERE}.{name} must be >= 0, got {getattr(self, name)}")
        unknown = [h for h in head_list(self) if h not in HEADS]
        if unknown:
            raise PersonalError(f"{WHERE}.heads: unknown head {unknown[0]!r} (known: "
                                f"{', '.join(HEADS)})")


def head_list(scfg: MultitaskConfig) -> list[str]:
    return [h.strip() for h in str(scfg.heads).split(",") if h.strip()]


class Heads(nn.Module):
    """The training-only heads on a hidden state [N, hidden]."""

    def __init__(self, hidden: int, users: int):
        super().__init__()
        self.persona = nn.Linear(hidden, users)
        self.device = nn.Linear(hidden, len(DEVICE_NAMES))
        self.param = nn.Linear(hidden, len(NUMERIC))


def turn_labels(actions: Optional[dict]) -> dict:
    """Device multi-hot, scaled numeric values and their mask, from a turn's settings."""
    actions = actions or {}
    devices = [1.0 if actions.get(d) else 0.0 for d in DEVICE_NAMES]
    values, mask = [], []
    for d, p, spec in NUMERIC:
        v = (actions.get(d) or {}).get(p)
        ok = isinstance(v, int) and not isinstance(v, bool)
        values.append((v - spec.lo) / (spec.hi - spec.lo) if ok else 0.0)
        mask.append(1.0 if ok else 0.0)
    return {"devices": devices, "values": values, "mask": mask}


def segment_starts(labels: torch.Tensor) -> list[tuple[int, int]]:
    """(row, position) of the hidden state read for each target segment: the position just
    before the segment's first labelled token."""
    lab = labels != -100
    start = lab & ~torch.cat([torch.zeros_like(lab[:, :1]), lab[:, :-1]], 1)
    return [(int(r), int(t) - 1) for r, t in start.nonzero()]


def label_features(features: list[dict], examples: list, user: int, use_gold: bool,
                   tokenizer) -> list[dict]:
    """Each feature with `aux` (one label record per target segment) and its user. Segments
    are the examples' turns in order; where the counts do not match (a truncated session),
    the segment's own target text is parsed instead."""
    starts = [segment_starts(torch.tensor([f["labels"]])) for f in features]
    aligned = sum(len(s) for s in starts) == len(examples)
    it = iter(examples)
    out = []
    for f, segs in zip(features, starts):
        aux = []
        for _, t in segs:
            ex = next(it) if aligned else None
            if ex is not None and use_gold:
                actions = ex.actions
            elif ex is not None:
                actions = parse_actions(ex.target)
            else:
                actions = parse_actions(_segment_text(f, t + 1, tokenizer))
            aux.append(turn_labels(actions))
        out.append(dict(f, aux=aux, user=user))
    return out


def _segment_text(feature: dict, start: int, tokenizer) -> str:
    ids = []
    for tok, lab in zip(feature["input_ids"][start:], feature["labels"][start:]):
        if lab == -100:
            break
        ids.append(tok)
    return tokenizer.decode(ids, skip_special_tokens=True)


def segment_hidden(model, batch: dict) -> tuple[torch.Tensor, list[dict], list[int]]:
    """(the last hidden state at each target segment's start [N, hidden], the segments'
    label records, their users), from one forward with hidden states."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    hidden = model(**inputs, use_cache=False, output_hidden_states=True).hidden_states[-1]
    where = segment_starts(batch["labels"])
    h = hidden[torch.tensor([r for r, _ in where]), torch.tensor([t for _, t in where])].float()
    records = [rec for aux in batch["aux"] for rec in aux]
    if len(records) != len(where):
        raise PersonalError(f"multitask: {len(where)} target segments but {len(records)} "
                            "label records")
    return h, records, [batch["user"][r] for r, _ in where]


def head_losses(model, batch: dict, scfg: MultitaskConfig) -> dict[str, torch.Tensor]:
    """Each head's loss on the batch's segments."""
    h, records, segment_users = segment_hidden(model, batch)
    heads = model.personal_heads
    users = torch.tensor(segment_users)
    devices = torch.tensor([rec["devices"] for rec in records])
    values = torch.tensor([rec["values"] for rec in records])
    mask = torch.tensor([rec["mask"] for rec in records])
    wanted = head_list(scfg)
    out = {}
    if "persona" in wanted:
        out["persona"] = F.cross_entropy(heads.persona(h), users)
    if "device" in wanted:
        out["device"] = F.binary_cross_entropy_with_logits(heads.device(h), devices)
    if "param" in wanted:
        err = (torch.sigmoid(heads.param(h)) - values).pow(2) * mask
        out["param"] = err.sum() / mask.sum().clamp(min=1.0)
    return out


def aux_term(scfg: MultitaskConfig):
    from personal.models.core import auxiliary_term

    weights = {"persona": scfg.w_persona, "device": scfg.w_device, "param": scfg.w_param}

    def fn(model, batch) -> torch.Tensor:
        losses = head_losses(model, batch, scfg)
        return sum(weights[k] * v for k, v in losses.items())

    return auxiliary_term("auxiliary_heads", 1.0, fn)


def encoded(ctx, split: str, names: list[str], use_gold: bool, pack: bool) -> list[dict]:
    fmt, tok = ctx.prompt_format(), ctx.base[1]
    out = []
    for k, pid in enumerate(names):
        exs = ctx.examples(split, [pid])
        feats = fmt.encode_training(tok, exs, pack) if pack else [fmt.encode(tok, e) for e in exs]
        out += label_features(feats, exs, k, use_gold, tok)
    return out


def train(ctx, scfg: MultitaskConfig) -> dict:
    from personal.models.lora import attach_lora, pad_id, train_settings
    from personal.models.training import lm_term, seed_everything, train_loop

    names = sorted(ctx.training_personas())
    model, tok = ctx.base
    train_exs = ctx.examples("train", names)
    use_gold = bool(train_exs) and all(e.actions is not None for e in train_exs)
    seed_everything(ctx.cfg.train.seed)
    adapted = attach_lora(model, ctx.cfg.lora)
    hidden = adapted.get_input_embeddings().weight.shape[1]
    adapted.personal_heads = Heads(hidden, len(names))
    data = encoded(ctx, "train", names, use_gold, ctx.cfg.train.pack_sessions)
    val = encoded(ctx, "val", names, use_gold, False)
    loop = train_loop(adapted, data, val, train_settings(ctx.cfg.train), pad_id(tok),
                      progress=ctx.progress, desc="train multitask",
                      terms=[lm_term(), aux_term(scfg)])
    adapted.eval()
    accuracy = {"train": head_accuracy(adapted, data[:256], scfg),
                "val": head_accuracy(adapted, val, scfg)}
    del adapted.personal_heads  # training-only: the exported folder is a plain peft LoRA
    adapted.save_pretrained(str(ctx.run.path / ADAPTER))
    record = {"strategy": NAME, "labels": "gold actions" if use_gold else "action parser",
              "accuracy": accuracy, "steps": loop.steps, "best_step": loop.best_step,
              "best_val_loss": loop.best_val_loss}
    ctx.run.write_json(DIAGNOSTICS, record | {"rows": diagnostic_rows(record)})
    return record


@torch.no_grad()
def head_accuracy(model, features: list[dict], scfg: MultitaskConfig) -> dict:
    """Persona accuracy, device exact-match accuracy and parameter MAE (in the parameters'
    own units) over the segments of `features`."""
    from personal.models.training import collate

    if not features:
        return {}
    wanted = head_list(scfg)
    hits = {"persona": [], "device": [], "param_err": []}
    for i in range(0, len(features), 16):
        batch = collate(features[i:i + 16], 0)  # carries each feature's aux and user
        h, recs, users = segment_hidden(model, batch)
        heads = model.personal_heads
        hits["persona"] += (heads.persona(h).argmax(1) == torch.tensor(users)).tolist()
        pred = heads.device(h) > 0
        hits["device"] += (pred == torch.tensor([r["devices"] for r in recs]).bool()).all(1).tolist()
        value = torch.sigmoid(heads.param(h))
        for rec, v in zip(recs, value):
            for j, (_, _, spec) in enumerate(NUMERIC):
                if rec["mask"][j]:
                    hits["param_err"].append(abs(float(v[j]) - rec["values"][j]) * (spec.hi - spec.lo))
    out = {"turns": len(hits["persona"])}
    if "persona" in wanted:
        out["persona_accuracy"] = sum(hits["persona"]) / len(hits["persona"])
    if "device" in wanted:
        out["device_accuracy"] = sum(hits["device"]) / len(hits["device"])
    if "param" in wanted and hits["param_err"]:
        out["param_mae"] = sum(hits["param_err"]) / len(hits["param_err"])
    return out


def diagnostic_rows(record: dict) -> list[dict]:
    """The report's strategy-check rows: each head on train and validation turns."""
    acc = record["accuracy"]
    rows = []
    for key, label in (("persona_accuracy", "persona head accuracy"),
                       ("device_accuracy", "device head exact match"),
                       ("param_mae", "parameter head MAE")):
        if key in acc.get("val", {}):
            fmt = (lambda v: f"{v:.1%}") if "accuracy" in key else (lambda v: f"{v:.2f}")
            rows.append({"check": label,
                         "value": f"val {fmt(acc['val'][key])} (train {fmt(acc['train'][key])})",
                         "turns": acc["val"]["turns"],
                         "meaning": f"labels from {record['labels']}; a head far better on "
                                    "train than on validation memorises"})
    return rows


def stages(ctx, scfg: MultitaskConfig) -> list:
    inputs = training_inputs(ctx, f"train/{NAME}", scfg.w_persona, scfg.w_device,
                             scfg.w_param, head_list(scfg))
    return [[Unit(f"train/{NAME}", inputs, lambda: train(ctx, scfg), [ADAPTER, DIAGNOSTICS])]]


def predictor(ctx, scfg: MultitaskConfig):
    from peft import PeftModel

    from personal.engine.generate import generate
    from personal.models.lora import merged_for_inference

    model, tokenizer = ctx.base
    adapted = PeftModel.from_pretrained(copy.deepcopy(model), str(ctx.run.path / ADAPTER)).eval()
    merged = merged_for_inference(adapted)
    fmt = ctx.prompt_format()
    return lambda examples: generate(merged, tokenizer, examples, ctx.cfg.generation, fmt=fmt,
                                     progress=ctx.progress)


register_strategy(NAME, config=MultitaskConfig, stages=stages, predictor=predictor,
                  serving=servable(fixed_routes(NAME, Route.one(ADAPTER))), plans=("phase3",),
                  position=120, expected_seconds={f"train/{NAME}": 400.0},
                  cold_start="the same adapter (it keeps no user state)")
