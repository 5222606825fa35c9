"""user_embedding: a learned vector e_u per user (dimension 16-128) conditioning the unified
model, trained jointly with one LoRA on all users (the study's Strategy 10).

e_u enters through a shared projection, either added to every input embedding
(`injection=add`: W e_u, zero at the start, so training starts at the plain LoRA) or as
`soft_tokens` virtual tokens in front of the prompt (an MLP of e_u). For a share of training
turns (`mean_dropout`) the row's vector is replaced by the mean of all vectors, so the mean,
which is what a new user gets, is something the model has seen; `mean_pull` adds an L2 pull
of every vector toward the mean.

At export each user's folder holds the shared LoRA and their materialised table (W e_u as
the engine's user vector, or the MLP's tokens as its prefix), so prediction and serving are
the engine's stacked path; the vectors and the projection themselves are saved beside the
folders (`adapters/user_embedding_vectors.safetensors` + `.json`). The shuffle check answers
test turns with another user's vector and records the share of changed outputs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from personal.data.safety import child_path
from personal.errors import PersonalError
from personal.strategies.common import (example_keys, own_or_fallback_predictor, user_groups,
                                        val_groups)
from personal.strategies.keys import training_inputs
from personal.strategies.registry import Unit, register_strategy, servable
from personal.strategies.routes import Route, RouteTable, own_or
from personal.strategies.unified_prefix import swap_unit

NAME = "user_embedding"
FOLDER = f"adapters/{NAME}"
COLD_START = f"adapters/{NAME}_mean"
VECTORS = f"adapters/{NAME}_vectors"
WHERE = f"strategy.{NAME}"


@dataclass
class UserEmbeddingConfig:
    """A vector per user and one LoRA, trained together (schedule from `train`)."""

    dim: int = 64
    """Dimension of each user's vector (the study: 64, so 64 x 200 = 12.8K per population)."""
    injection: str = "add"
    """add: W e_u added to every input embedding; soft_tokens: an MLP of e_u as virtual
    tokens in front of the prompt."""
    soft_tokens: int = 2
    """Virtual tokens with injection=soft_tokens."""
    mean_dropout: float = 0.2
    """Share of training turns whose vector is replaced by the mean of all vectors."""
    mean_pull: float = 0.0
    """Weight of an L2 pull of every vector toward the mean (0: none)."""
    lr: float = 1e-2
    """Peak learning rate of the vectors and the projection (the LoRA takes train.lr)."""
    val_turns: int = 16
    """Validation turns per user for early stopping, evenly spread (0: all of them)."""
    swap_turns: int = 64
    """Test turns of the shuffle check (0: no check)."""

    def __post_init__(self) -> None:  # at config time: a bad option stops before any work
        if not isinstance(self.dim, int) or self.dim < 1:
            raise PersonalError(f"{WHERE}.dim must be >= 1, got {self.dim}")
        if self.injection not in ("add", "soft_tokens"):
            raise PersonalError(f"{WHERE}.injection must be add or soft_tokens, got "
                                f"{self.injection!r}")
        if not isinstance(self.soft_tokens, int) or self.soft_tokens < 1:
            raise PersonalError(f"{WHERE}.soft_tokens must be >= 1, got {self.soft_tokens}")
        if not 0 <= self.mean_dropout < 1:
            raise PersonalError(f"{WHERE}.mean_dropout must be in [0, 1), got "
                                f"{self.mean_dropout}")
        for name in ("mean_pull", "lr", "swap_turns", "val_turns"):
            if not getattr(self, name) >= 0:
                raise PersonalError(f"{WHERE}.{name} must be >= 0, got {getattr(self, name)}")


class UserConditioner(nn.Module):
    """The engine's prompt tables' role (`engine.build_inputs` reads it), computed from the
    users' vectors: per batch row, W e_u (add) or MLP(e_u) as virtual tokens (soft_tokens).
    While training, `mean_dropout` of the rows take the mean vector instead."""

    def __init__(self, users: int, hidden: int, scfg: UserEmbeddingConfig, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.user_vectors = nn.Parameter(torch.randn(users, scfg.dim, generator=g) * 0.1)
        self.soft = scfg.injection == "soft_tokens"
        self.prefix_len = scfg.soft_tokens if self.soft else 0
        if self.soft:
            self.proj = nn.Sequential(nn.Linear(scfg.dim, hidden), nn.Tanh(),
                                      nn.Linear(hidden, hidden * self.prefix_len))
        else:
            self.proj = nn.Linear(scfg.dim, hidden, bias=False)
            nn.init.zeros_(self.proj.weight)  # start at the plain LoRA: W e_u = 0
        self.mean_dropout = scfg.mean_dropout
        self._drop = torch.Generator().manual_seed(seed + 1)

    def vectors_of(self, index: torch.Tensor) -> torch.Tensor:
        """[B, dim]: each row's vector (the mean for -1 rows and dropped-out rows)."""
        v = self.user_vectors.index_select(0, index.clamp(min=0))
        mean = self.user_vectors.mean(0, keepdim=True).expand_as(v)
        use_mean = index < 0
        if self.training and self.mean_dropout > 0:
            drop = torch.rand(index.shape[0], generator=self._drop) < self.mean_dropout
            use_mean = use_mean | drop.to(index.device)
        return torch.where(use_mean[:, None], mean, v)

    def table(self, vectors: torch.Tensor) -> torch.Tensor:
        """What the engine stores per user: [N, hidden] (add) or [N, L, hidden] (soft)."""
        out = self.proj(vectors)
        return out.view(vectors.shape[0], self.prefix_len, -1) if self.soft else out

    def rows_user_vector(self, routing) -> Optional[torch.Tensor]:
        return None if self.soft else self.table(self.vectors_of(routing.index))

    def rows_prefix(self, routing) -> Optional[torch.Tensor]:
        return self.table(self.vectors_of(routing.index)) if self.soft else None


def mean_pull_term(weight: float):
    from personal.models.core import auxiliary_term

    def fn(model, batch) -> torch.Tensor:
        v = model.inner.personal_prompts.user_vectors
        return (v - v.mean(0, keepdim=True)).pow(2).sum(1).mean()

    return auxiliary_term("mean_pull", weight, fn)


def train(ctx, scfg: UserEmbeddingConfig, groups: dict, vals: dict) -> dict:
    from personal.engine.prompts import RoutedModel
    from personal.engine.stacked_lora import get_routing
    from personal.models.lora import attach_lora, pad_id, train_settings
    from personal.models.training import lm_term, seed_everything, train_loop

    names = sorted(groups)
    model, tok = ctx.base
    fmt, pack = ctx.prompt_format(), ctx.cfg.train.pack_sessions
    seed_everything(ctx.cfg.train.seed)
    adapted = attach_lora(model, ctx.cfg.lora)
    hidden = adapted.get_input_embeddings().weight.shape[1]
    get_routing(adapted, len(names))
    adapted.personal_prompts = UserConditioner(len(names), hidden, scfg, ctx.cfg.train.seed)
    data = [dict(f, adapter=k) for k, n in enumerate(names)
            for f in fmt.encode_training(tok, groups[n], pack)]
    val = [dict(fmt.encode(tok, e), adapter=k) for k, n in enumerate(names)
           for e in vals.get(n, [])]
    settings = dataclasses.replace(train_settings(ctx.cfg.train),
                                   group_lrs={"user_vector": scfg.lr, "prompt": scfg.lr})
    terms = [lm_term()] + ([mean_pull_term(scfg.mean_pull)] if scfg.mean_pull > 0 else [])
    routed = RoutedModel(adapted)
    loop = train_loop(routed, data, val, settings, pad_id(tok), progress=ctx.progress,
                      desc="train LoRA + user vectors", terms=terms)
    routed.eval()
    export(ctx, adapted, names, scfg)
    return {"users": len(names), "steps": loop.steps, "best_step": loop.best_step,
            "best_val_loss": loop.best_val_loss, "params_per_user": scfg.dim}


@torch.no_grad()
def export(ctx, adapted, names: list[str], scfg: UserEmbeddingConfig) -> None:
    """Per user: the LoRA and their materialised table; the mean vector's for new users;
    the vectors and projection themselves beside them."""
    from safetensors.torch import save_file

    from personal.engine.peft_io import PROMPTS_FILE

    cond = adapted.personal_prompts
    vectors = cond.user_vectors.detach()
    tables = cond.table(vectors)
    key = "prompts.prefix" if cond.soft else "prompts.user_vector"
    mean = cond.table(vectors.mean(0, keepdim=True))[0]
    outs = [child_path(ctx.run.path / FOLDER, n, "persona id") for n in names]
    for out, t in [(o, tables[k]) for k, o in enumerate(outs)] + \
            [(ctx.run.path / COLD_START, mean)]:
        adapted.save_pretrained(str(out))
        save_file({key: t.detach().cpu().contiguous()}, str(out / PROMPTS_FILE),
                  metadata={"format": "pt"})
    state = {"user_vectors": vectors.cpu().contiguous()}
    state.update({f"proj.{k}": v.detach().cpu().contiguous()
                  for k, v in cond.proj.state_dict().items()})
    (ctx.run.path / VECTORS).mkdir(parents=True, exist_ok=True)
    save_file(state, str(ctx.run.path / VECTORS / "vectors.safetensors"),
              metadata={"format": "pt"})
    (ctx.run.path / VECTORS / "vectors.json").write_text(json.dumps(
        {"users": names, "dim": scfg.dim, "injection": scfg.injection,
         "soft_tokens": scfg.soft_tokens}, indent=1) + "\n", encoding="utf-8")


def stages(ctx, scfg: UserEmbeddingConfig) -> list:
    groups, vals = user_groups(ctx, "train"), val_groups(ctx, scfg.val_turns)
    keys, vkeys = example_keys(groups), example_keys(vals)
    options = {k: v for k, v in dataclasses.asdict(scfg).items() if k != "swap_turns"}
    unit = Unit(f"train/{NAME}", training_inputs(ctx, f"train/{NAME}", keys, vkeys, options),
                lambda: train(ctx, scfg, groups, vals), [FOLDER, COLD_START, VECTORS])
    out = [[unit]]
    if scfg.swap_turns:
        out.append([swap_unit(ctx, NAME, FOLDER, scfg.swap_turns, unit.inputs,
                              "user-vector shuffle", "share of test turns whose output "
                              "changes when another user's vector answers them; "
                              f"{scfg.dim} trained parameters per user",
                              {"params_per_user": scfg.dim})])
    return out


def predictor(ctx, scfg: UserEmbeddingConfig):
    return own_or_fallback_predictor(ctx, FOLDER, COLD_START)


def routes(ctx, scfg: UserEmbeddingConfig) -> RouteTable:
    """Each trained user gets the LoRA and their vector; everybody else the mean vector."""
    fallback = Route.one(COLD_START)
    return RouteTable(NAME, own_or(ctx, FOLDER, fallback), fallback, "prompt")


register_strategy(NAME, config=UserEmbeddingConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase3",), position=130,
                  expected_seconds={f"train/{NAME}": 300.0, f"check/{NAME}_swap": 20.0},
                  cold_start="the mean of the trained users' vectors")
