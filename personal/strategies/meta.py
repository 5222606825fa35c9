"""meta_lora: an adapter initialisation that adapts to a user in a few steps (the study's
Strategy 8), meta-learned over users as tasks on the LoRA parameters, from the unified one.

Each meta-step samples `users_per_step` users, splits each one's training sessions into a
support set (`support_size` dialogues) and a query set (the rest), and runs every sampled
user's inner loop at once through the engine (one stacked model, each slot one user):
`inner_steps` plain SGD steps at `inner_lr` on the support set, from the current
initialisation. Then the outer update: Reptile moves the initialisation toward the adapted
weights (theta += outer_lr * mean(phi_u - theta)); first-order MAML steps along the mean
query gradient at the adapted weights (theta -= outer_lr * mean grad L_query(phi_u)).

A user is adapted at test time by exactly that inner loop (same steps, lr and support size,
their most recent training dialogues as support), all users as one fleet; a new user gets
the initialisation itself. With one inner step Reptile is joint training on the sampled
users' support batches (its update is the joint SGD step), the known failure a test checks.

The adaptation curve (`diagnostics/meta_lora_curve.json`, rows of the report's strategy
checks) says whether meta-learning bought anything: the emb_sim of a spread sample of users'
evaluated turns after adapting on their 0, 1, 5, 10 and all most recent dialogues, from the
meta-learned initialisation and from the unified adapter (hybrid: unified + plain
fine-tuning) with the same inner loop (steps, lr, batch), for training users and for
cold-start users (whose dialogues are the validation sessions they have).
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import torch

from personal.data.safety import child_path
from personal.errors import PersonalError
from personal.strategies import unified
from personal.strategies.common import own_or_fallback_predictor, user_groups
from personal.strategies.keys import training_inputs
from personal.strategies.registry import Unit, register_strategy, servable
from personal.strategies.routes import Route, RouteTable, own_or

NAME = "meta_lora"
FOLDER = f"adapters/{NAME}"
INIT = f"adapters/{NAME}_init"
WHERE = f"strategy.{NAME}"


@dataclass
class MetaConfig:
    """Meta-learning of the LoRA initialisation over users."""

    algorithm: str = "reptile"
    """reptile or fomaml (first-order MAML)."""
    inner_steps: int = 5
    """SGD steps of a user's inner loop (in meta-training and at test time)."""
    inner_lr: float = 0.05
    """Learning rate of the inner loop's plain SGD."""
    outer_lr: float = 0.5
    """Reptile: the share of the way toward the adapted weights; FOMAML: the SGD step on
    the mean query gradient."""
    support_size: int = 5
    """Training dialogues of a user's support set."""
    meta_steps: int = 40
    """Outer updates."""
    users_per_step: int = 16
    """Users (tasks) per outer update, their inner loops batched."""
    batch_size: int = 4
    """Sequences per inner step."""
    adapt_chunk: int = 64
    """Users adapted per engine call at test time."""
    curve_points: list[int] = field(default_factory=lambda: [0, 1, 5, 10, -1])
    """Support dialogues of the adaptation curve's points (-1: all the user has)."""
    curve_users: int = 40
    """Training users of the curve, evenly spread (every cold-start user is in it too;
    0: no curve)."""
    curve_turns: int = 4
    """Evaluated turns per user the curve scores, evenly spread."""

    def __post_init__(self) -> None:  # at config time: a bad option stops before any work
        if self.algorithm not in ("reptile", "fomaml"):
            raise PersonalError(f"{WHERE}.algorithm must be reptile or fomaml, got "
                                f"{self.algorithm!r}")
        for name in ("inner_steps", "support_size", "users_per_step", "batch_size",
                     "adapt_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise PersonalError(f"{WHERE}.{name} must be an integer >= 1, got {v}")
        if not isinstance(self.curve_users, int) or self.curve_users < 0 or \
                not isinstance(self.curve_turns, int) or self.curve_turns < 1:
            raise PersonalError(f"{WHERE}: curve_users must be >= 0 and curve_turns >= 1")
        if any(not isinstance(n, int) or n < -1 for n in self.curve_points):
            raise PersonalError(f"{WHERE}.curve_points must be dialogue counts >= 0 (or -1: "
                                f"all), got {self.curve_points}")
        if not isinstance(self.meta_steps, int) or self.meta_steps < 0:
            raise PersonalError(f"{WHERE}.meta_steps must be >= 0, got {self.meta_steps}")
        for name in ("inner_lr", "outer_lr"):
            if not getattr(self, name) > 0:
                raise PersonalError(f"{WHERE}.{name} must be > 0, got {getattr(self, name)}")


def sessions_of(examples) -> dict[int, list]:
    out: dict[int, list] = {}
    for e in examples:
        out.setdefault(e.session_id, []).append(e)
    return out


def check_support(ctx, scfg: MetaConfig) -> None:
    """A support set larger than a user's training dialogues is refused at plan time (FOMAML
    also needs one more dialogue for the query)."""
    need = scfg.support_size + (1 if scfg.algorithm == "fomaml" else 0)
    for pid, exs in user_groups(ctx, "train").items():
        n = len(sessions_of(exs))
        if n < need:
            raise PersonalError(f"{WHERE}.support_size={scfg.support_size} needs {need} training "
                                f"dialogues per user; user {pid} has {n}")


def stack_model(ctx, n: int, state: dict):
    from personal.engine.stacked_lora import inject_stacked_lora, load_adapter_state

    lora = ctx.cfg.lora
    model = inject_stacked_lora(copy.deepcopy(ctx.base[0]), n, rank=lora.rank, alpha=lora.alpha,
                                dropout=0.0, target_modules=lora.target_modules)
    load_adapter_state(model, None, state)
    return model


def inner_loop(ctx, state: dict, datasets: list[list[dict]], steps: int, lr: float,
               batch_size: int, seeds: list[int]):
    """Every dataset's inner loop at once from `state`: `steps` plain SGD steps at `lr`,
    each on the slot's next batch (its own order, seeded); returns the stacked model."""
    from personal.engine.sampler import adapter_batches
    from personal.engine.stacked_lora import stacked_parameters

    model = stack_model(ctx, len(datasets), state).train()
    params = [p for p in stacked_parameters(model).values() if p.requires_grad]
    plans = [adapter_batches(len(d), batch_size, float(steps), steps, s) for d, s in
             zip(datasets, seeds)]
    for step in range(steps):
        rows = [(j, datasets[j][i]) for j, plan in enumerate(plans) if step < len(plan)
                for i in plan[step]]
        slot_mean_loss(ctx, model, rows).backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= lr * p.grad
                    p.grad = None
    return model


def slot_mean_loss(ctx, model, rows: list[tuple[int, dict]]) -> torch.Tensor:
    """Sum over slots of each slot's token-mean loss on its (slot, example) rows: slots are
    disjoint parameters, so each gets exactly its own loss's gradient."""
    from personal.engine.sampler import collate, target_count
    from personal.engine.train import _row_losses
    from personal.models.lora import pad_id

    counts: dict[int, int] = {}
    for j, ex in rows:
        counts[j] = counts.get(j, 0) + target_count(ex, False)
    batch = collate(rows, pad_id(ctx.base[1]), next(model.parameters()).device)
    total, _ = _row_losses(model, batch, torch.tensor([1.0 / counts[j] for j, _ in rows]))
    return total


def query_grads(ctx, model, datasets: list[list[dict]]) -> dict[str, torch.Tensor]:
    """The mean over slots of each slot's query-loss gradient at its current weights."""
    from personal.engine.stacked_lora import stacked_parameters

    params = stacked_parameters(model)
    slot_mean_loss(ctx, model, [(j, ex) for j, d in enumerate(datasets) for ex in d]).backward()
    return {k: p.grad.mean(0).detach().clone() for k, p in params.items() if p.grad is not None}


def meta_update(state: dict, model, scfg: MetaConfig, grads=None) -> dict:
    """The outer step from the inner loops' adapted slots (Reptile) or query gradients."""
    from personal.engine.stacked_lora import stacked_parameters

    params = stacked_parameters(model)
    if scfg.algorithm == "reptile":
        return {k: v + scfg.outer_lr * (params[k].detach().mean(0) - v) for k, v in state.items()}
    return {k: v - scfg.outer_lr * grads[k] for k, v in state.items()}


def encode(ctx, examples) -> list[dict]:
    return ctx.prompt_format().encode_training(ctx.base[1], examples,
                                               ctx.cfg.train.pack_sessions)


def meta_train(ctx, scfg: MetaConfig) -> dict:
    from personal.engine import import_peft

    state = {k: v.float() for k, v in import_peft([ctx.run.path / unified.ADAPTER]).adapter(0).items()}
    groups = user_groups(ctx, "train")
    names = sorted(groups)
    rng = random.Random(ctx.cfg.train.seed)
    for step in range(scfg.meta_steps):
        users = rng.sample(names, min(scfg.users_per_step, len(names)))
        support, query = [], []
        for u in users:
            sessions = sessions_of(groups[u])
            chosen = set(rng.sample(sorted(sessions), scfg.support_size))
            support.append(encode(ctx, [e for s in sorted(chosen) for e in sessions[s]]))
            query.append(encode(ctx, [e for s in sorted(set(sessions) - chosen)
                                      for e in sessions[s]]))
        seeds = [ctx.cfg.train.seed + 1000 * step + k for k in range(len(users))]
        model = inner_loop(ctx, state, support, scfg.inner_steps, scfg.inner_lr,
                           scfg.batch_size, seeds)
        grads = query_grads(ctx, model, query) if scfg.algorithm == "fomaml" else None
        state = meta_update(state, model, scfg, grads)
    export_state(ctx, state, ctx.run.path / INIT)
    return {"meta_steps": scfg.meta_steps, "algorithm": scfg.algorithm}


def export_state(ctx, state: dict, out) -> None:
    from personal.engine import export_peft

    export_peft(stack_model(ctx, 1, state), 0, out, base_model_name_or_path=ctx.cfg.model.base)


def support_of(exs, size: int) -> list:
    """A user's test-time support set: their `size` most recent training dialogues."""
    sessions = sessions_of(exs)
    keep = sorted(sessions)[-size:]
    return [e for s in keep for e in sessions[s]]


def adapt_users(ctx, scfg: MetaConfig) -> dict:
    """Every training user's inner loop from the learned initialisation, as one fleet."""
    from personal.engine import export_peft, import_peft

    state = import_peft([ctx.run.path / INIT]).adapter(0)
    groups = user_groups(ctx, "train")
    names = sorted(groups)
    for at in range(0, len(names), scfg.adapt_chunk):
        chunk = names[at:at + scfg.adapt_chunk]
        data = [encode(ctx, support_of(groups[u], scfg.support_size)) for u in chunk]
        seeds = [ctx.cfg.train.seed + names.index(u) for u in chunk]
        model = inner_loop(ctx, state, data, scfg.inner_steps, scfg.inner_lr, scfg.batch_size,
                           seeds)
        for j, u in enumerate(chunk):
            export_peft(model, j, child_path(ctx.run.path / FOLDER, u, "persona id"),
                        base_model_name_or_path=ctx.cfg.model.base)
    return {"adapted": len(names)}


# --- The adaptation curve --------------------------------------------------------------------

CURVE = f"diagnostics/{NAME}_curve.json"


def own_dialogues(ctx, pid: str) -> list:
    """The dialogues a user has to adapt on: training, or validation for a cold-start user."""
    return ctx.examples("train", [pid]) or ctx.examples("val", [pid])


def curve_scores(ctx, scfg: MetaConfig, state: dict, users: list[str], turns: dict,
                 n: int, seed_of: dict[str, int]) -> float:
    """Mean emb_sim over `turns` of `users` after each one's inner loop from `state` on
    their `n` most recent dialogues (0: `state` itself; -1: all), in chunks of users; user
    u's batches are drawn with `seed_of[u]` (adapt_users' seed for a training user, so the
    point at support_size is exactly meta_lora's own adaptation)."""
    from personal.engine import generate_routed
    from personal.eval.metrics import Pair, emb_sim

    fmt, tok, gen = ctx.prompt_format(), ctx.base[1], ctx.cfg.generation
    scores = []
    for at in range(0, len(users), scfg.adapt_chunk):
        chunk = users[at:at + scfg.adapt_chunk]
        examples = [e for u in chunk for e in turns[u]]
        rows = [j for j, u in enumerate(chunk) for _ in turns[u]]
        if n == 0:
            model, rows = stack_model(ctx, 1, state), [0] * len(examples)
        else:
            data = [encode(ctx, own_dialogues(ctx, u) if n < 0
                           else support_of(own_dialogues(ctx, u), n)) for u in chunk]
            seeds = [seed_of[u] for u in chunk]
            model = inner_loop(ctx, state, data, scfg.inner_steps, scfg.inner_lr,
                               scfg.batch_size, seeds)
        texts = generate_routed(model, tok, examples, rows, gen, fmt=fmt)
        scores += emb_sim([Pair(t, e.target) for t, e in zip(texts, examples)])
    return sum(scores) / len(scores) if scores else float("nan")


def adaptation_curve(ctx, scfg: MetaConfig) -> dict:
    """The curve's record: per user group and start, the score at each point."""
    from personal.engine import import_peft
    from personal.models.lora import spread_sample

    starts = {"meta": import_peft([ctx.run.path / INIT]).adapter(0),
              "hybrid": {k: v.float() for k, v in
                         import_peft([ctx.run.path / unified.ADAPTER]).adapter(0).items()}}
    evaluated = set(ctx.eval_personas())
    trained = [p for p in sorted(user_groups(ctx, "train")) if p in evaluated]
    cold = [p for p in ctx.eval_personas() if ctx.splits[p].cold_start]
    groups = {"training": spread_sample(trained, scfg.curve_users), "cold_start": cold}
    names = sorted(user_groups(ctx, "train"))
    seed_of = {u: ctx.cfg.train.seed + k for k, u in enumerate(names + cold)}
    split = ctx.cfg.eval.split
    record = {"points": list(scfg.curve_points), "inner_steps": scfg.inner_steps,
              "inner_lr": scfg.inner_lr, "turns_per_user": scfg.curve_turns}
    for group, users in groups.items():
        turns = {u: spread_sample(ctx.examples(split, [u]), scfg.curve_turns) for u in users}
        users = [u for u in users if turns[u]]
        record[group] = {"users": len(users), **{
            start: [curve_scores(ctx, scfg, state, users, turns, n, seed_of) if users else None
                    for n in scfg.curve_points] for start, state in starts.items()}}
    record["rows"] = curve_rows(record)
    return record


def curve_rows(record: dict) -> list[dict]:
    """The report's rows: per group, meta vs hybrid at each point."""
    label = lambda n: "all" if n < 0 else str(n)  # noqa: E731
    rows = []
    for group in ("training", "cold_start"):
        r = record[group]
        if not r["users"]:
            continue
        cells = [f"{label(n)}: {m:.4f} vs {h:.4f}" for n, m, h in
                 zip(record["points"], r["meta"], r["hybrid"])]
        rows.append({"check": f"adaptation curve ({group.replace('_', '-')} users)",
                     "value": "; ".join(cells), "turns": r["users"] * record["turns_per_user"],
                     "meaning": f"emb sim after adapting on the user's N most recent "
                                f"dialogues ({record['inner_steps']} SGD steps at "
                                f"{record['inner_lr']:g}): meta-learned start vs unified "
                                "start (hybrid) with the same steps"})
    return rows


def curve_unit(ctx, scfg: MetaConfig, upstream: str) -> Unit:
    def work() -> dict:
        record = {"strategy": NAME, **adaptation_curve(ctx, scfg)}
        ctx.run.write_json(CURVE, record)
        return {g: record[g] for g in ("training", "cold_start")}

    inputs = training_inputs(ctx, f"check/{NAME}_curve", upstream, scfg.curve_points,
                             scfg.curve_users, scfg.curve_turns, scfg.adapt_chunk)
    return Unit(f"check/{NAME}_curve", inputs, work, [CURVE])


def stages(ctx, scfg: MetaConfig) -> list:
    check_support(ctx, scfg)
    curve_fields = ("adapt_chunk", "curve_points", "curve_users", "curve_turns")
    options = {k: v for k, v in scfg.__dict__.items() if k not in curve_fields}
    meta = Unit(f"train/{NAME}", training_inputs(ctx, f"train/{NAME}", options,
                                                 unified.training_inputs(ctx)),
                lambda: meta_train(ctx, scfg), [INIT])
    adapt = Unit(f"adapt/{NAME}", training_inputs(ctx, f"adapt/{NAME}", meta.inputs),
                 lambda: adapt_users(ctx, scfg), [FOLDER])
    out = unified.unified_stages(ctx) + [[meta], [adapt]]
    if scfg.curve_users:
        out.append([curve_unit(ctx, scfg, meta.inputs)])
    return out


def predictor(ctx, scfg: MetaConfig):
    return own_or_fallback_predictor(ctx, FOLDER, INIT)


def routes(ctx, scfg: MetaConfig) -> RouteTable:
    """Each trained user gets their adapted adapter; everybody else the initialisation."""
    fallback = Route.one(INIT)
    return RouteTable(NAME, own_or(ctx, FOLDER, fallback), fallback)


register_strategy(NAME, config=MetaConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase3",), position=125,
                  expected_seconds={f"train/{NAME}": 200.0, f"adapt/{NAME}": 60.0,
                                    f"check/{NAME}_curve": 150.0},
                  cold_start="the meta-learned initialisation (no support dialogues)")
