"""moe_lora: a mixture of LoRA experts with a learned router that reads each request.

Experts are adapters trained on groups of users: cluster_lora's own cluster adapters (by
default: the same assignment and adapters, trained once for both strategies), or `n_experts`
clusters of this strategy's own. With `shared_expert` the experts are residuals trained on
top of the frozen unified adapter (merged into the base while they train, exported as
unified + residual), so every mixture Σ w_k (U + R_k) with Σ w_k = 1 keeps the unified
adapter fully on and mixes only the residuals.

The router is a small MLP over the MiniLM embedding of the request (the user's message and
the session context, `retrieval_index.query_text`), optionally with the user's 63 training
features (standardized over the training users; a user the run does not know gets zeros,
the mean). It outputs weights over the experts per request: `hard` (top-1), `topk`
(renormalised) or `soft` (all). It is trained on training turns only, against the experts'
teacher-forced losses on each turn: the lowest-loss expert as the label (`target: best`) or
a softmax over negative losses (`target: soft`), plus a balance term against collapse
(`balance` · K · Σ_k mean_weight_k², 1 at uniform use). Training end to end through the
mixture's LM loss is not built.

Weights are rounded to 3 decimals (and zeros dropped) before they route: the embedding of a
message can move in its last bits with the batch it is encoded in, and rounding makes the
served mixture the offline one. The router is saved as `routers/moe_lora/router.safetensors`
with `router.json` (its config, the expert folders, the feature scaling).

What it learned is checked on a spread sample of evaluated turns (`diagnostics/moe_lora.json`,
a row group of the report's strategy checks): each expert's share of turns, the routing
entropy, agreement with an oracle that picks the lowest-loss expert per turn, that oracle's
emb_sim beside the router's on the same turns (the headroom of any router) and beside a
uniform mixture's (every expert at 1/K, whatever the turn: the control that says whether the
routing, not the mixing, helps), and a collapse flag when one expert takes over 95% of turns.

    personal train moe_lora strategy.moe_lora.mode=soft strategy.moe_lora.n_experts=8
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from personal.data.embed import embed
from personal.data.features import user_features
from personal.data.schema import Example
from personal.errors import PersonalError
from personal.models.lora import spread_sample
from personal.strategies import cluster, unified
from personal.strategies.common import fleet_schedule, load_stack
from personal.strategies.fleet import FleetSpec
from personal.strategies.keys import training_inputs
from personal.strategies.registry import (Unit, get_strategy, register_strategy, servable,
                                          strategy_config)
from personal.strategies.retrieval_index import query_text
from personal.strategies.routes import Decision, Route, RouteTable, experts_of

NAME = "moe_lora"
OWN = cluster.ExpertPaths(NAME, "adapters/moe_lora", "clusters/moe_lora.json")
ROUTER_DIR = "routers/moe_lora"
ROUTER_WEIGHTS = f"{ROUTER_DIR}/router.safetensors"
ROUTER_CONFIG = f"{ROUTER_DIR}/router.json"
DIAGNOSTICS = f"diagnostics/{NAME}.json"
MODES = ("hard", "topk", "soft")
TARGETS = ("best", "soft")
INPUTS = ("message", "message+user")
#: One expert routed more than this share of turns: the router collapsed.
COLLAPSE_SHARE = 0.95
#: Decimals router weights keep (see the module docstring).
WEIGHT_DECIMALS = 3


@dataclass
class MoEConfig:
    """Experts, router and mode of the mixture."""

    n_experts: Optional[int] = None
    """Number of experts: None uses cluster_lora's assignment and adapters (its settings in
    `strategy.cluster_lora`); K clusters (KMeans, clamped below the number of users) of this
    strategy's own, in adapters/moe_lora."""
    shared_expert: bool = False
    """Experts are residuals on the frozen unified adapter, which every mixture keeps on
    (trained here, in adapters/moe_lora); off: full adapters started from unified."""
    mode: str = "topk"
    """`hard` (top-1 expert), `topk` (the `top_k` best, weights renormalised) or `soft` (all)."""
    top_k: int = 2
    """Experts mixed in `topk` mode."""
    router_input: str = "message"
    """`message` (the user's message and session context) or `message+user` (also the
    user's 63 training features; unknown users get the mean)."""
    target: str = "soft"
    """The router's label per turn: `best` (the lowest-loss expert) or `soft` (softmax of
    the experts' negative mean token losses at `temperature`)."""
    temperature: float = 0.1
    """Temperature of the soft target, in nats of mean token loss: experts' losses on one
    turn differ by ~0.05-0.5, so 1.0 would make every target near uniform."""
    balance: float = 0.01
    """Weight of the balance term (0: none)."""
    hidden: int = 128
    """Hidden units of the router MLP (0: a linear router)."""
    router_steps: int = 300
    """Full-batch Adam steps of router training."""
    router_lr: float = 3e-3
    """Router learning rate."""
    label_turns: int = 8
    """Training turns labelled per user (evenly spread), each scored by every expert."""
    diagnostic_turns: int = 300
    """Evaluated turns (spread) the diagnostics score every expert and the oracle on (0: no
    diagnostics)."""
    seed: int = 0
    """Seed of the router's initialisation."""
    epochs: Optional[float] = 1.0
    """Passes over a cluster's turns for experts trained here (n_experts or shared_expert)."""
    lr: Optional[float] = None
    """Peak learning rate of experts trained here (None: train.lr)."""

    def __post_init__(self) -> None:  # at config time: a bad option stops before any work
        check_config(self)


def check_config(scfg: MoEConfig) -> None:
    """Refuse options that cannot work, naming the option."""
    where = f"strategy.{NAME}"
    for name, allowed in (("mode", MODES), ("target", TARGETS), ("router_input", INPUTS)):
        if getattr(scfg, name) not in allowed:
            raise PersonalError(f"{where}.{name} must be one of {', '.join(allowed)}, "
                                f"got {getattr(scfg, name)!r}")
    if scfg.n_experts is not None and (not isinstance(scfg.n_experts, int) or scfg.n_experts < 2):
        raise PersonalError(f"{where}.n_experts must be >= 2 (a mixture), got {scfg.n_experts}")
    if scfg.top_k < 1:
        raise PersonalError(f"{where}.top_k must be >= 1, got {scfg.top_k}")
    if not scfg.temperature > 0:
        raise PersonalError(f"{where}.temperature must be > 0, got {scfg.temperature}")
    if not scfg.balance >= 0:
        raise PersonalError(f"{where}.balance must be >= 0, got {scfg.balance}")
    if scfg.hidden < 0 or scfg.router_steps < 1 or scfg.label_turns < 1 or \
            scfg.diagnostic_turns < 0 or not scfg.router_lr > 0:
        raise PersonalError(f"{where}: hidden >= 0, router_steps >= 1, label_turns >= 1, "
                            "diagnostic_turns >= 0 and router_lr > 0 are needed")


# --- Experts ---------------------------------------------------------------------------------

def own_experts(scfg: MoEConfig) -> bool:
    """Whether the experts are trained by this strategy (else: cluster_lora's adapters)."""
    return scfg.n_experts is not None or scfg.shared_expert


def cluster_config(ctx, scfg: MoEConfig) -> cluster.ClusterConfig:
    """The clustering the experts come from: cluster_lora's settings, with K if set."""
    spec = get_strategy(cluster.NAME)
    ccfg = strategy_config(spec, ctx.cfg.strategy.get(cluster.NAME))
    if scfg.n_experts is not None:
        ccfg = dataclasses.replace(ccfg, method="kmeans", n_clusters=scfg.n_experts,
                                   user_deltas=False)
    return ccfg


def expert_paths(scfg: MoEConfig) -> cluster.ExpertPaths:
    if not own_experts(scfg):
        return cluster.CLUSTER
    if scfg.n_experts is not None:
        return OWN
    # residual experts on cluster_lora's own assignment: one clustering for both strategies
    return cluster.ExpertPaths(NAME, OWN.folder, cluster.ASSIGNMENT, assign_name=cluster.NAME)


def assignment_paths(scfg: MoEConfig) -> cluster.ExpertPaths:
    return OWN if scfg.n_experts is not None else cluster.CLUSTER


def expert_spec(ctx, scfg: MoEConfig) -> FleetSpec:
    train = fleet_schedule(ctx, scfg)
    if scfg.shared_expert:
        return FleetSpec(folder=OWN.folder, merge_from=unified.ADAPTER, train=train)
    return FleetSpec(folder=OWN.folder, init_from=unified.ADAPTER, train=train)


def expert_folders(ctx, scfg: MoEConfig) -> list[str]:
    """Run-relative folders of the experts, in cluster order."""
    record = cluster.read_assignment(ctx, cluster_config(ctx, scfg), assignment_paths(scfg))
    return [f"{expert_paths(scfg).folder}/{c}" for c in sorted(record["clusters"])]


def expert_stages(ctx, scfg: MoEConfig) -> tuple[list[list[Unit]], str]:
    """(the stages that make the experts, the input hash of the last one)."""
    ccfg = cluster_config(ctx, scfg)
    head = [u for stage in unified.unified_stages(ctx) for u in stage]
    assign = cluster.assign_unit(ctx, ccfg, assignment_paths(scfg))
    spec = expert_spec(ctx, scfg) if own_experts(scfg) else None
    fleet = cluster.cluster_fleet_unit(ctx, ccfg, assign.inputs, expert_paths(scfg), spec)
    return [head + [assign], [fleet]], fleet.inputs


# --- The router ------------------------------------------------------------------------------

def router_net(n_in: int, n_out: int, hidden: int, seed: int):
    """The router MLP (Linear, or Linear-GELU-Linear), seeded."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if hidden == 0:
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def router_targets(losses: np.ndarray, scfg: MoEConfig) -> np.ndarray:
    """[turns, K] target distributions from the experts' mean token losses [turns, K]."""
    if scfg.target == "best":
        out = np.zeros_like(losses)
        out[np.arange(len(losses)), losses.argmin(axis=1)] = 1.0
        return out
    z = -(losses - losses.min(axis=1, keepdims=True)) / scfg.temperature
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_router(x: np.ndarray, targets: np.ndarray, scfg: MoEConfig):
    """The router trained on features x [N, d] toward `targets` [N, K]: cross-entropy to the
    targets plus the balance term; full batch, Adam, seeded. Returns (net, final losses)."""
    import torch
    import torch.nn.functional as F

    net = router_net(x.shape[1], targets.shape[1], scfg.hidden, scfg.seed)
    xt, tt = torch.tensor(x, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=scfg.router_lr, weight_decay=1e-4)
    k = targets.shape[1]
    for _ in range(scfg.router_steps):
        logp = F.log_softmax(net(xt), dim=-1)
        ce = -(tt * logp).sum(-1).mean()
        balance = k * (logp.exp().mean(0) ** 2).sum()
        loss = ce + scfg.balance * balance
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), {"ce": ce.item(), "balance": balance.item()}


def route_weights(probs: np.ndarray, mode: str, top_k: int) -> np.ndarray:
    """[N, K] weights the mixture uses from router probabilities: one-hot top-1 (`hard`),
    the top-k renormalised, or all; rounded to WEIGHT_DECIMALS (zeros then drop out)."""
    n, k = probs.shape
    keep = {"hard": 1, "topk": min(top_k, k), "soft": k}[mode]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :keep]
    out = np.zeros_like(probs)
    rows = np.arange(n)[:, None]
    out[rows, order] = probs[rows, order]
    out = out / out.sum(axis=1, keepdims=True)
    return np.round(out, WEIGHT_DECIMALS)


class RequestFeatures:
    """Router inputs of turns: the MiniLM embedding of the message and context, and with
    `message+user` the user's standardized training features (zeros for unknown users)."""

    def __init__(self, ctx, router_input: str, scaling: Optional[dict] = None):
        self.router_input = router_input
        self.users: dict[str, np.ndarray] = {}
        self.scaling = scaling
        if router_input == "message+user":
            feats = user_features(ctx.dataset, ctx.splits)
            if scaling is None:  # fit on the training users only
                fit = np.isin(feats.persona_ids, ctx.training_personas())
                mean, std = feats.matrix[fit].mean(0), feats.matrix[fit].std(0)
                self.scaling = {"mean": mean.tolist(), "std": std.tolist()}
            mean, std = np.array(self.scaling["mean"]), np.array(self.scaling["std"])
            z = (feats.matrix - mean) / np.where(std > 0, std, 1.0)
            # a block of 63 next to 384 unit-norm dims: scaled to about the same norm
            z = z / math.sqrt(z.shape[1])
            self.users = {p: z[i].astype(np.float32) for i, p in enumerate(feats.persona_ids)}

    @property
    def width(self) -> int:
        return 384 + (len(next(iter(self.users.values()))) if self.users else 0)

    def __call__(self, examples: Sequence[Example]) -> np.ndarray:
        x = embed([query_text(e) for e in examples])
        if self.router_input == "message":
            return x
        zero = np.zeros(self.width - 384, dtype=np.float32)
        return np.hstack([x, np.stack([self.users.get(e.persona_id, zero) for e in examples])])


def save_router(ctx, net, record: dict) -> None:
    """router.safetensors (the MLP's state) and router.json (what reads it back)."""
    from safetensors.torch import save_file

    folder = ctx.run.path / ROUTER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()},
              str(ctx.run.path / ROUTER_WEIGHTS), metadata={"format": "pt"})
    ctx.run.write_json(ROUTER_CONFIG, record)


def load_router(ctx):
    """(net, record) of the run's router; a PersonalError when it is not trained."""
    from safetensors.torch import load_file

    path = ctx.run.path / ROUTER_WEIGHTS
    record = ctx.run.read_json(ROUTER_CONFIG)
    if record is None or not path.is_file():
        raise PersonalError(f"{ctx.run.path / ROUTER_DIR}: router not trained yet; run "
                            f"`personal train {NAME}` first")
    net = router_net(record["inputs_width"], len(record["experts"]), record["hidden"], 0)
    net.load_state_dict(load_file(str(path)))
    return net.eval(), record


def router_probs(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.softmax(net(torch.tensor(x, dtype=torch.float32)), -1).double().numpy()


# --- Expert losses per turn ------------------------------------------------------------------

def expert_stack(ctx, folders: Sequence[str]):
    """The base with the experts (run-relative folders) as one stack, slot k = expert k."""
    return load_stack(ctx, [ctx.run.path / f for f in folders])


def expert_losses(ctx, model, examples: Sequence[Example]) -> np.ndarray:
    """[turns, K]: each expert's mean token loss on each turn's target (teacher forced, one
    sequence per turn, all experts in shared passes of one stack)."""
    import torch

    from personal.engine.sampler import collate, pack_rows, pass_cost, target_count
    from personal.engine.stacked_lora import get_routing
    from personal.engine.train import _row_losses
    from personal.models.lora import pad_id

    fmt, tok = ctx.prompt_format(), ctx.base[1]
    k_experts = get_routing(model).num_adapters
    feats = [fmt.encode(tok, e) for e in examples]
    rows = [(k, dict(f, turn=i)) for i, f in enumerate(feats) for k in range(k_experts)]
    out = np.zeros((len(examples), k_experts))
    device = next(model.parameters()).device
    with torch.no_grad():
        for chunk in pack_rows(rows, 64, pass_cost(device)):
            _, sums = _row_losses(model, collate(chunk, pad_id(tok), device))
            for (k, f), s in zip(chunk, sums.tolist()):
                out[f["turn"], k] = s / max(target_count(f, False), 1)
    return out


def label_examples(ctx, per_user: int) -> list[Example]:
    """Each training user's training turns, at most `per_user`, evenly spread."""
    out = []
    for pid in ctx.training_personas():
        out += spread_sample(ctx.examples("train", [pid]), per_user)
    return out


def train_router(ctx, scfg: MoEConfig) -> dict:
    """Label training turns with the experts' losses, fit the router, save it."""
    folders = expert_folders(ctx, scfg)
    if len(folders) < 2:
        raise PersonalError(f"{NAME}: the clustering made {len(folders)} expert; a mixture "
                            f"needs at least 2 (more training users, or "
                            f"strategy.{NAME}.n_experts)")
    turns = label_examples(ctx, scfg.label_turns)
    losses = expert_losses(ctx, expert_stack(ctx, folders), turns)
    feats = RequestFeatures(ctx, scfg.router_input)
    x = feats(turns)
    net, final = fit_router(x, router_targets(losses, scfg), scfg)
    probs = router_probs(net, x)
    record = {"experts": folders, "inputs_width": int(x.shape[1]), "hidden": scfg.hidden,
              "router_input": scfg.router_input, "scaling": feats.scaling, "mode": scfg.mode,
              "top_k": scfg.top_k, "target": scfg.target, "temperature": scfg.temperature,
              "balance": scfg.balance, "embedder": "all-MiniLM-L6-v2",
              "labelled_turns": len(turns), "final_loss": final,
              "train_agreement": float((probs.argmax(1) == losses.argmin(1)).mean()),
              "label_shares": np.bincount(losses.argmin(1), minlength=len(folders)).tolist()}
    save_router(ctx, net, record)
    return {k: record[k] for k in ("labelled_turns", "train_agreement", "final_loss")}


# --- Routing turns and requests --------------------------------------------------------------

class MoERouter:
    """The run's trained router: examples -> mixture weights over the experts."""

    def __init__(self, ctx, scfg: MoEConfig):
        self.net, self.record = load_router(ctx)
        self.features = RequestFeatures(ctx, self.record["router_input"], self.record["scaling"])
        self.folders = list(self.record["experts"])
        self.mode, self.top_k = scfg.mode, scfg.top_k

    def probs(self, examples: Sequence[Example]) -> np.ndarray:
        return router_probs(self.net, self.features(examples))

    def weights(self, examples: Sequence[Example]) -> np.ndarray:
        return route_weights(self.probs(examples), self.mode, self.top_k)

    def routes(self, examples: Sequence[Example]) -> list[Route]:
        """One Route per example: the experts with nonzero weight, in stack order."""
        out = []
        for w in self.weights(examples):
            used = tuple((self.folders[k], float(w[k])) for k in np.flatnonzero(w))
            out.append(Route(used, mixture=self.mode != "hard"))
        return out

    def decide(self, examples: Sequence[Example]) -> list[Decision]:
        return [Decision(r, info={"experts": experts_of(r)}) for r in self.routes(examples)]

    def rows(self, examples: Sequence[Example]) -> list:
        """Offline routing rows: expert indices (hard) or weight vectors."""
        return self.rows_of(self.weights(examples))

    def rows_of(self, w: np.ndarray) -> list:
        """Routing rows of mixture weights [N, K]."""
        if self.mode == "hard":
            return [int(k) for k in w.argmax(1)]
        return [row.tolist() for row in w]


def predictor(ctx, scfg: MoEConfig):
    from personal.engine import generate_routed

    router = MoERouter(ctx, scfg)
    model = expert_stack(ctx, router.folders)
    fmt, tok = ctx.prompt_format(), ctx.base[1]

    def predict(examples: list[Example]) -> list[str]:
        return generate_routed(model, tok, examples, router.rows(examples), ctx.cfg.generation,
                               fmt=fmt, progress=ctx.progress)

    return predict


def routes(ctx, scfg: MoEConfig) -> RouteTable:
    """The adapters the app may load (every expert) and the fallback; each request's route
    comes from the router (`request_router`)."""
    folders = expert_folders(ctx, scfg)
    return RouteTable(NAME, {}, Route(tuple((f, 1.0 / len(folders)) for f in folders),
                                      mixture=True))


def request_router(ctx, scfg: MoEConfig) -> MoERouter:
    return MoERouter(ctx, scfg)


# --- Diagnostics -----------------------------------------------------------------------------

def entropy(weights: np.ndarray) -> np.ndarray:
    p = np.clip(weights, 1e-12, 1.0)
    return -(weights * np.log(p)).sum(axis=1)


def diagnose(ctx, scfg: MoEConfig) -> dict:
    """What the router learned, on a spread sample of evaluated turns."""
    from personal.engine import generate_routed
    from personal.eval.metrics import Pair, emb_sim

    router = MoERouter(ctx, scfg)
    turns = spread_sample(ctx.examples(ctx.cfg.eval.split, ctx.eval_personas()),
                          scfg.diagnostic_turns)
    k = len(router.folders)
    model = expert_stack(ctx, router.folders)  # one stack: the losses and the generations
    losses = expert_losses(ctx, model, turns)
    probs = router.probs(turns)
    weights = route_weights(probs, router.mode, router.top_k)
    oracle = losses.argmin(1)
    shares = np.bincount(weights.argmax(1), minlength=k) / len(turns)
    fmt, tok, gen = ctx.prompt_format(), ctx.base[1], ctx.cfg.generation

    def score(rows) -> float:
        texts = generate_routed(model, tok, turns, rows, gen, fmt=fmt)
        return float(np.mean(emb_sim([Pair(t, e.target) for t, e in zip(texts, turns)])))

    mine, best = score(router.rows_of(weights)), score([int(o) for o in oracle])
    # the control a learned router must beat: every expert at weight 1/K, whatever the turn
    even = score([[1.0 / k] * k for _ in turns])

    return {"turns": len(turns), "experts": router.folders, "mode": scfg.mode,
            "shares": shares.tolist(), "max_share": float(shares.max()),
            "collapsed": bool(shares.max() > COLLAPSE_SHARE),
            "entropy": float(entropy(probs).mean()), "max_entropy": math.log(k),
            "mixture_entropy": float(entropy(weights).mean()),
            "oracle_agreement": float((probs.argmax(1) == oracle).mean()),
            "oracle_shares": (np.bincount(oracle, minlength=k) / len(turns)).tolist(),
            "router_emb_sim": mine, "oracle_emb_sim": best, "uniform_emb_sim": even,
            "rows": diagnostic_rows(len(turns), shares, probs, weights, oracle, k, mine, best,
                                    even)}


def diagnostic_rows(n, shares, probs, weights, oracle, k, mine, best,
                    even: Optional[float] = None) -> list[dict]:
    """The report's rows of what the router learned."""
    top = int(shares.argmax())
    collapse = " (collapsed)" if shares.max() > COLLAPSE_SHARE else ""
    return [
        {"check": "expert shares", "turns": n,
         "value": " / ".join(f"{s:.0%}" for s in shares) + collapse,
         "meaning": f"share of turns whose largest weight is each expert's; expert {top} "
                    f"leads; over {COLLAPSE_SHARE:.0%} for one expert is a collapse"},
        {"check": "routing entropy", "turns": n,
         "value": f"{entropy(probs).mean():.2f} of {math.log(k):.2f} nats",
         "meaning": "mean entropy of the router's distribution (max: uniform over experts)"},
        {"check": "oracle agreement", "turns": n,
         "value": f"{(probs.argmax(1) == oracle).mean():.1%} (chance {1 / k:.1%})",
         "meaning": "the router's top expert is the one with the lowest loss on the turn"},
        {"check": "oracle headroom", "turns": n,
         "value": f"router {mine:.4f} vs oracle {best:.4f} emb sim"
                  + ("" if even is None else f" (uniform mixture {even:.4f})"),
         "meaning": "the lowest-loss expert per turn, hard-routed: what any router could "
                    "reach with these experts; the uniform mixture (every expert at 1/K) is "
                    "the control a learned router must beat"}]


def diagnostics_unit(ctx, scfg: MoEConfig, upstream: str) -> Unit:
    def work() -> dict:
        record = {"strategy": NAME, **diagnose(ctx, scfg)}
        ctx.run.write_json(DIAGNOSTICS, record)
        return {k: record[k] for k in ("turns", "max_share", "collapsed", "oracle_agreement",
                                       "router_emb_sim", "oracle_emb_sim", "uniform_emb_sim")}

    # "uniform": the record holds the uniform-mixture control (a record without it reruns)
    inputs = training_inputs(ctx, f"check/{NAME}", "uniform", upstream, scfg.mode, scfg.top_k,
                             scfg.diagnostic_turns, dataclasses.asdict(ctx.cfg.generation))
    return Unit(f"check/{NAME}", inputs, work, [DIAGNOSTICS])


def stages(ctx, scfg: MoEConfig) -> list[list[Unit]]:
    check_config(scfg)
    head, experts = expert_stages(ctx, scfg)
    router_fields = {f: getattr(scfg, f) for f in
                     ("router_input", "target", "temperature", "balance", "hidden",
                      "router_steps", "router_lr", "label_turns", "seed")}
    inputs = training_inputs(ctx, f"train/{NAME}_router", experts, router_fields)
    router = Unit(f"train/{NAME}_router", inputs, lambda: train_router(ctx, scfg),
                  [ROUTER_DIR])
    out = head + [[router]]
    if scfg.diagnostic_turns:
        out.append([diagnostics_unit(ctx, scfg, inputs)])
    return out


register_strategy(NAME, config=MoEConfig, stages=stages, predictor=predictor,
                  serving=servable(routes, request_router=request_router),
                  plans=("phase3",), position=128,
                  expected_seconds={"train/moe_lora_router": 120.0, "check/moe_lora": 60.0,
                                    "eval/moe_lora": 200.0},
                  cold_start="the router's mixture from the user's message alone (with "
                             "message+user: the mean user's features)")
