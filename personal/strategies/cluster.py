"""cluster_lora: users grouped by what their training data shows, one LoRA adapter per
cluster, and optionally a small per-user delta on top of the user's cluster adapter.

A user is represented by two blocks, each standardized over the clustered users and weighted:
the 63 training-only features of `personal.data.features` (style, devices, parameter values,
routines, contexts) and the mean MiniLM embedding of a sample of their assistant turns.
Clusters come from KMeans, agglomerative (Ward) or DBSCAN (scikit-learn, seeded); their number
is fixed (`n_clusters`) or the best silhouette over `k_candidates`, clamped below the number of
users. A cold-start user (no training sessions) is placed in the cluster whose centroid is
nearest to the features of their first (validation) sessions.

Stages: [the unified adapter (with `init: unified`), assign users → clusters/cluster_lora.json]
→ [one fleet: an adapter per cluster on its users' turns] → [with `user_deltas`: one fleet per
cluster of per-user adapters, each started from that cluster's adapter].

    personal train cluster_lora strategy.cluster_lora.n_clusters=10
    python scripts/cluster_personas.py --method agglomerative     # the assignment only
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from personal.data.embed import embed
from personal.data.features import fill_undefined, user_features
from personal.data.schema import Dataset, Splits
from personal.data.splits import training_sessions
from personal.errors import PersonalError
from personal.hashing import stable_hash
from personal.strategies import unified
from personal.strategies.common import (adapter_schedule, fleet_schedule, fleet_unit,
                                        routed_predictor, user_groups)
from personal.strategies.fleet import FleetSpec, spec_dict
from personal.strategies.keys import training_inputs as unit_inputs
from personal.strategies.registry import Unit, register_strategy, servable
from personal.strategies.routes import Route, RouteTable, unknown_fallback

NAME = "cluster_lora"
FOLDER = "adapters/cluster_lora"
USERS_FOLDER = "adapters/cluster_lora_users"
ASSIGNMENT = "clusters/cluster_lora.json"
METHODS = ("kmeans", "agglomerative", "dbscan")
EMBEDDER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ExpertPaths:
    """Where a clustering and its fleet live in a run: cluster_lora's own, or another
    strategy's that groups users the same way with settings of its own (moe_lora's K)."""

    name: str
    """Unit names: `assign/<name>`, `train/<name>`."""
    folder: str
    """Run-relative folder of the cluster adapters (`<folder>/cluster_00`, ...)."""
    assignment: str
    """Run-relative JSON file of the assignment record."""
    assign_name: Optional[str] = None
    """Name of the unit that makes the assignment (None: `name`): another strategy's fleet
    may train on cluster_lora's own assignment."""

    @property
    def assign_unit(self) -> str:
        return f"assign/{self.assign_name or self.name}"


CLUSTER = ExpertPaths(NAME, FOLDER, ASSIGNMENT)
#: DBSCAN without `eps`: try these percentiles of the users' k-nearest-neighbour distances.
EPS_PERCENTILES = (25, 50, 75, 90)


@dataclass
class ClusterConfig:
    """Clusters of users, an adapter per cluster (shape from `lora`, schedule from `train`
    unless set here) and optional per-user deltas."""

    method: str = "kmeans"
    """Clustering: `kmeans`, `agglomerative` (Ward linkage) or `dbscan`."""
    n_clusters: Optional[int] = None
    """Fixed number of clusters (clamped to users - 1); None: the best silhouette over
    `k_candidates`. Not for dbscan, whose clusters follow from `eps`."""
    k_candidates: list[int] = field(default_factory=lambda: [5, 10, 15, 20, 25])
    """Numbers of clusters tried when `n_clusters` is None; each is clamped to users - 1, so
    a 3-user world tries k = 2."""
    eps: Optional[float] = None
    """DBSCAN neighbourhood radius in the weighted feature space; None: the best silhouette
    over the 25th, 50th, 75th and 90th percentile of the users' distances to their
    `min_samples`-th nearest neighbour."""
    min_samples: int = 2
    """DBSCAN: users within `eps` that make a core user. Users DBSCAN calls noise join the
    nearest cluster (every user needs an adapter)."""
    feature_weight: float = 1.0
    """Weight of the 63 training-data features (0: leave them out)."""
    embedding_weight: float = 1.0
    """Weight of the MiniLM embedding of the user's assistant turns (0: leave it out and
    never load MiniLM). Each block is divided by the square root of its width, so at equal
    weights the 63 features and the 384 embedding dimensions count the same."""
    embed_turns: int = 32
    """Assistant turns embedded per user, evenly spread over their training sessions: the
    mean of 32 is a steady estimate, and 200 users x 32 = 6.4k turns embed in ~35 s on 2
    CPU cores, where all ~22k training turns would take ~2 minutes."""
    seed: int = 0
    """Seed of KMeans."""
    init: str = "unified"
    """Where cluster adapters start: `unified` (the unified adapter, trained in the same run
    when missing) or `base` (peft's zero update)."""
    epochs: Optional[float] = 1.0
    """Passes over the cluster's training turns: one fleet of ~10 cluster adapters at one
    epoch costs about one unified training (the same turns, split across adapters)."""
    lr: Optional[float] = None
    """Peak learning rate of the cluster adapters (None: train.lr)."""
    batch_size: Optional[int] = None
    """Turns (sessions when packed) per step (None: train.batch_size)."""
    eval_every: Optional[int] = 0
    """Validation checks on the cluster's validation turns every N steps (0: once per epoch)."""
    patience: Optional[int] = None
    """Checks without improvement before stopping (None: train.patience)."""
    user_deltas: bool = False
    """Also train one adapter per user started from their cluster's adapter (cluster + user);
    users without one (cold-start) are answered by their cluster's adapter."""
    delta_epochs: Optional[float] = 1.0
    """Passes over the user's training turns for their delta."""
    delta_lr: Optional[float] = 5e-4
    """Peak learning rate of the deltas: lower, a fine-tune of a trained adapter."""
    delta_l2_lambda: float = 0.0
    """Pull each delta toward its cluster adapter (0: plain continued training)."""


#: The fields the assignment depends on (the rest only shape training).
ASSIGN_FIELDS = ("method", "n_clusters", "k_candidates", "eps", "min_samples", "feature_weight",
                 "embedding_weight", "embed_turns", "seed")


def check_config(scfg: ClusterConfig) -> None:
    """PersonalError naming the first bad setting."""
    where = f"strategy.{NAME}"
    if scfg.method not in METHODS:
        raise PersonalError(f"{where}.method must be one of {', '.join(METHODS)}, "
                            f"got {scfg.method!r}")
    if scfg.init not in ("unified", "base"):
        raise PersonalError(f"{where}.init must be 'unified' or 'base', got {scfg.init!r}")
    if scfg.n_clusters is not None and scfg.n_clusters < 1:
        raise PersonalError(f"{where}.n_clusters must be at least 1, got {scfg.n_clusters}")
    if scfg.n_clusters is not None and scfg.method == "dbscan":
        raise PersonalError(f"{where}.n_clusters does not apply to dbscan (set eps, or leave "
                            "both unset to choose eps by silhouette)")
    if not scfg.k_candidates or min(scfg.k_candidates) < 1:
        raise PersonalError(f"{where}.k_candidates must be a non-empty list of numbers >= 1, "
                            f"got {scfg.k_candidates}")
    if scfg.feature_weight < 0 or scfg.embedding_weight < 0 or \
            scfg.feature_weight + scfg.embedding_weight == 0:
        raise PersonalError(f"{where}: feature_weight and embedding_weight must be >= 0 and "
                            "not both 0")
    if scfg.embed_turns < 1 or scfg.min_samples < 1 or (scfg.eps is not None and scfg.eps <= 0):
        raise PersonalError(f"{where}: embed_turns and min_samples must be >= 1 and eps > 0")


# --- How users are represented ---------------------------------------------------------------

def clustered_personas(splits: Splits) -> list[str]:
    """Users the clusters are fit on: not cold-start, with training sessions."""
    return [pid for pid, sp in splits.items() if not sp.cold_start and sp.train]


def sample_evenly(items: Sequence, n: int) -> list:
    """At most `n` of `items`, evenly spread (first and last kept)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def turn_embeddings(ds: Dataset, splits: Splits, ids: Sequence[str], turns: int) -> np.ndarray:
    """[users, 384]: each user's mean embedding of up to `turns` assistant turns of their
    training sessions (train; val for cold-start users); NaN for a user with none."""
    by_id = ds.by_id()
    picked = []
    for pid in ids:
        sessions = [by_id[pid].sessions[i] for i in training_sessions(splits[pid])]
        texts = [m.text for s in sessions for m in s.messages if m.role == "assistant"]
        picked.append(sample_evenly(texts, turns))
    # one call for all users: full, length-sorted batches instead of one short call per user
    vecs, rows, start = embed([t for texts in picked for t in texts]), [], 0
    for texts in picked:
        mine = vecs[start:start + len(texts)]
        start += len(texts)
        rows.append(mine.mean(axis=0) if len(mine) else np.full(vecs.shape[1], np.nan))
    return np.array(rows, dtype=np.float64)


def scaled_block(block: np.ndarray, fit_rows: np.ndarray, weight: float) -> np.ndarray:
    """Columns standardized over `fit_rows` (constant columns become 0), times
    weight / sqrt(width): a block's share of the distance does not grow with its width."""
    mean, std = block[fit_rows].mean(axis=0), block[fit_rows].std(axis=0)
    return (block - mean) / np.where(std > 0, std, 1.0) * weight / math.sqrt(block.shape[1])


def user_matrix(ds: Dataset, splits: Splits, scfg: ClusterConfig
                ) -> tuple[list[str], np.ndarray]:
    """(persona ids, weighted feature rows) of every user in `splits`, standardized over the
    clustered users only (a cold-start user moves no column)."""
    feats = user_features(ds, splits)
    fit = np.isin(feats.persona_ids, clustered_personas(splits))
    blocks = []
    if scfg.feature_weight > 0:
        blocks.append(scaled_block(feats.matrix, fit, scfg.feature_weight))
    if scfg.embedding_weight > 0:
        emb = fill_undefined(turn_embeddings(ds, splits, feats.persona_ids, scfg.embed_turns))
        blocks.append(scaled_block(emb, fit, scfg.embedding_weight))
    return feats.persona_ids, np.hstack(blocks)


# --- Clustering ------------------------------------------------------------------------------

def candidate_ks(candidates: Sequence[int], users: int) -> list[int]:
    """The candidates clamped to [1, users - 1] (a silhouette needs k < users), deduplicated."""
    return sorted({max(1, min(k, users - 1)) for k in candidates})


def canonical_labels(labels: Sequence[int]) -> np.ndarray:
    """Labels renumbered 0, 1, ... in order of first appearance (stable cluster names)."""
    order = {}
    for lab in labels:
        order.setdefault(int(lab), len(order))
    return np.array([order[int(lab)] for lab in labels], dtype=int)


def centroids(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean row of each cluster, in label order."""
    return np.stack([x[labels == c].mean(axis=0) for c in range(labels.max() + 1)])


def nearest_centroid(rows: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center (Euclidean) for each row."""
    d = ((rows[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    return d.argmin(axis=1)


def silhouette(x: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """Mean silhouette, or None where it is undefined (one cluster, or one user each)."""
    # sklearn (heavy, ~1 s) loads only when clusters are fitted, here and below
    from sklearn.metrics import silhouette_score

    k = len(set(labels.tolist()))
    return float(silhouette_score(x, labels)) if 2 <= k <= len(x) - 1 else None


def fit_labels(x: np.ndarray, method: str, k: Optional[int] = None, eps: Optional[float] = None,
               min_samples: int = 2, seed: int = 0) -> np.ndarray:
    """Canonical cluster labels of the rows of `x` by `method` (k clusters, or DBSCAN's
    `eps`; DBSCAN's noise users join their nearest cluster, all noise is one cluster)."""
    from sklearn.cluster import DBSCAN, AgglomerativeClustering, KMeans

    if k == 1 or len(x) == 1:
        return np.zeros(len(x), dtype=int)
    if method == "kmeans":
        return canonical_labels(KMeans(k, random_state=seed, n_init=10).fit_predict(x))
    if method == "agglomerative":
        return canonical_labels(AgglomerativeClustering(k, linkage="ward").fit_predict(x))
    raw = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(x)
    core = raw >= 0
    if not core.any():
        return np.zeros(len(x), dtype=int)
    labels = canonical_labels(raw[core])
    out = np.empty(len(x), dtype=int)
    out[core] = labels
    out[~core] = nearest_centroid(x[~core], centroids(x[core], labels))
    return canonical_labels(out)


def dbscan_eps(x: np.ndarray, scfg: ClusterConfig) -> list[float]:
    """The eps values DBSCAN tries: the configured one, or percentiles of every user's
    distance to their `min_samples`-th nearest neighbour (the k-distance heuristic of the
    DBSCAN paper: a core user's neighbourhood at typical density)."""
    if scfg.eps is not None:
        return [scfg.eps]
    if len(x) < 2:
        return [1.0]
    d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    kth = np.sort(d, axis=1)[:, min(scfg.min_samples, len(x) - 1) - 1]
    return sorted({max(float(np.percentile(kth, p)), 1e-9) for p in EPS_PERCENTILES})


def choose_clusters(x: np.ndarray, scfg: ClusterConfig) -> tuple[np.ndarray, list[dict]]:
    """(labels, candidates): every candidate fitted and scored by silhouette; the best one
    (ties and undefined scores: the first, i.e. the fewest clusters) gives the labels."""
    if scfg.method == "dbscan":
        tries = [{"eps": e} for e in dbscan_eps(x, scfg)]
    elif scfg.n_clusters is not None:
        tries = [{"k": max(1, min(scfg.n_clusters, len(x) - 1))}]
    else:
        tries = [{"k": k} for k in candidate_ks(scfg.k_candidates, len(x))]
    fits = []
    for t in tries:
        labels = fit_labels(x, scfg.method, t.get("k"), t.get("eps"), scfg.min_samples,
                            scfg.seed)
        fits.append((labels, {**t, "k": int(labels.max()) + 1,
                              "silhouette": silhouette(x, labels)}))
    best = max(range(len(fits)), key=lambda n: (_score(fits[n][1]), -n))
    return fits[best][0], [{**c, "chosen": n == best} for n, (_, c) in enumerate(fits)]


def _score(candidate: dict) -> float:
    s = candidate["silhouette"]
    return -math.inf if s is None else s


def cluster_name(label: int) -> str:
    return f"cluster_{label:02d}"


def assign_clusters(ds: Dataset, splits: Splits, scfg: ClusterConfig) -> dict:
    """The assignment record: clusters fit on the training users, cold-start users placed at
    the nearest centroid, the chosen k and the silhouette of every candidate."""
    check_config(scfg)
    ids, x = user_matrix(ds, splits, scfg)
    fit_ids = clustered_personas(splits)
    if not fit_ids:
        raise PersonalError("cluster_lora: no user has training sessions to cluster")
    fit = np.isin(ids, fit_ids)
    labels, candidates = choose_clusters(x[fit], scfg)
    placed = nearest_centroid(x[~fit], centroids(x[fit], labels)) if (~fit).any() else []
    fit_names = [p for p, f in zip(ids, fit) if f]
    placed_names = [p for p, f in zip(ids, fit) if not f]
    clusters: dict[str, list[str]] = {cluster_name(c): [] for c in range(labels.max() + 1)}
    for pid, lab in zip(fit_names, labels):
        clusters[cluster_name(lab)].append(pid)
    chosen = next(c for c in candidates if c["chosen"])
    return {
        "method": scfg.method, "k": len(clusters), "silhouette": chosen["silhouette"],
        "chosen_by": "fixed" if scfg.n_clusters is not None or scfg.eps is not None
        else "silhouette",
        "candidates": candidates, "clusters": clusters,
        "placed": {p: cluster_name(c) for p, c in zip(placed_names, placed)},
        "assignment": {**{p: cluster_name(c) for p, c in zip(fit_names, labels)},
                       **{p: cluster_name(c) for p, c in zip(placed_names, placed)}},
        "representation": {"features": scfg.feature_weight > 0, "embedding": EMBEDDER
                           if scfg.embedding_weight > 0 else None,
                           "feature_weight": scfg.feature_weight,
                           "embedding_weight": scfg.embedding_weight,
                           "embed_turns": scfg.embed_turns, "dims": int(x.shape[1])}}


def place_users(ds: Dataset, splits: Splits, scfg: ClusterConfig, record: dict,
                personas: Sequence[str]) -> dict[str, str]:
    """persona -> cluster for users the assignment never saw (a new population joined to the
    run's data as cold-start users): the rule of `assign_clusters` for cold-start users, the
    nearest centroid of the clustered users' rows. Their rows are standardized over the
    clustered users only, so they come out as when the clusters were fit."""
    ids, x = user_matrix(ds, splits, scfg)
    names = sorted(record["clusters"])
    label = {p: names.index(c) for c, members in record["clusters"].items() for p in members}
    fit = np.array([p in label for p in ids])
    labels = np.array([label[p] for p in ids if p in label])
    rows = [ids.index(p) for p in personas]
    placed = nearest_centroid(x[rows], centroids(x[fit], labels)) if rows else []
    return {p: names[c] for p, c in zip(personas, placed)}


def describe_assignment(record: dict) -> str:
    """A few lines for people: the chosen k, every candidate's silhouette, the clusters."""
    fmt = lambda s: "n/a" if s is None else f"{s:.3f}"  # noqa: E731
    lines = [f"{record['method']}: k={record['k']} ({record['chosen_by']}), "
             f"silhouette {fmt(record['silhouette'])}"]
    for c in record["candidates"]:
        eps = f" eps={c['eps']:.3f}" if "eps" in c else ""
        mark = "  <- chosen" if c["chosen"] else ""
        lines.append(f"  candidate{eps} k={c['k']}: silhouette {fmt(c['silhouette'])}{mark}")
    for name, members in record["clusters"].items():
        placed = sorted(p for p, c in record["placed"].items() if c == name)
        extra = f" + cold-start {', '.join(placed)}" if placed else ""
        lines.append(f"  {name} ({len(members)} users): {', '.join(members)}{extra}")
    return "\n".join(lines)


# --- Units -----------------------------------------------------------------------------------

def assign_inputs(ctx, scfg: ClusterConfig, where: ExpertPaths = CLUSTER) -> str:
    """What the assignment depends on: the data and splits, and the clustering settings."""
    return stable_hash(where.assign_unit, ctx.fingerprint, EMBEDDER,
                       {f: getattr(scfg, f) for f in ASSIGN_FIELDS})


def assign_unit(ctx, scfg: ClusterConfig, where: ExpertPaths = CLUSTER) -> Unit:
    """Writes the assignment file (the record of `assign_clusters`, plus its inputs)."""
    inputs = assign_inputs(ctx, scfg, where)

    def work() -> dict:
        record = assign_clusters(ctx.dataset, ctx.splits, scfg)
        ctx.run.write_json(where.assignment, {**record, "inputs": inputs})
        return {"k": record["k"], "silhouette": record["silhouette"],
                "placed": len(record["placed"])}

    return Unit(where.assign_unit, inputs, work, [where.assignment], needs_base=False)


def read_assignment(ctx, scfg: ClusterConfig, where: ExpertPaths = CLUSTER) -> dict:
    """The run's assignment; a PersonalError when it is missing or from other settings."""
    path = ctx.run.path / where.assignment
    record = ctx.run.read_json(where.assignment)
    owner = where.assign_name or where.name
    if record is None:
        raise PersonalError(f"{path} not found: run `personal train {owner}` first")
    if record.get("inputs") != assign_inputs(ctx, scfg, where):
        raise PersonalError(f"{path} was made from other data or clustering settings: run "
                            f"`personal train {owner}` again")
    return record


def training_inputs(ctx, name: str, spec: FleetSpec, upstream: Sequence[str]) -> str:
    """Inputs of a fleet whose groups come from the assignment (hashed in `upstream`)."""
    return unit_inputs(ctx, name, spec_dict(spec), list(upstream))


def cluster_spec(ctx, scfg: ClusterConfig, where: ExpertPaths = CLUSTER) -> FleetSpec:
    return FleetSpec(folder=where.folder,
                     init_from=unified.ADAPTER if scfg.init == "unified" else None,
                     train=fleet_schedule(ctx, scfg))


def cluster_fleet_unit(ctx, scfg: ClusterConfig, assign: str, where: ExpertPaths = CLUSTER,
                       spec: Optional[FleetSpec] = None) -> Unit:
    """One fleet, one adapter per cluster on its users' training turns. The groups are read
    from the assignment when the unit runs (it is made in the stage before); the unit's
    inputs hash the assignment's inputs instead of the groups. `spec`: another kind of
    cluster adapter (moe_lora's residual experts), by default `cluster_spec`."""
    name, spec = f"train/{where.name}", spec or cluster_spec(ctx, scfg, where)
    starts_from_unified = spec.init_from == unified.ADAPTER or spec.merge_from == unified.ADAPTER
    upstream = [assign] + ([unified.training_inputs(ctx)] if starts_from_unified else [])

    def work() -> dict:
        clusters = read_assignment(ctx, scfg, where)["clusters"]
        groups = {c: ctx.examples("train", members) for c, members in clusters.items()}
        vals = {c: ctx.examples("val", members) for c, members in clusters.items()}
        return fleet_unit(ctx, name, groups, vals, spec, upstream).fn()

    return Unit(name, training_inputs(ctx, name, spec, upstream), work, [spec.folder])


def delta_spec(ctx, scfg: ClusterConfig, cluster: str) -> FleetSpec:
    """The per-user fleet of `cluster`: started from that cluster's adapter (one init per
    fleet, hence one fleet per cluster)."""
    return FleetSpec(folder=f"{USERS_FOLDER}/{cluster}", init_from=f"{FOLDER}/{cluster}",
                     l2_lambda=scfg.delta_l2_lambda,
                     train=adapter_schedule(ctx, epochs=scfg.delta_epochs, lr=scfg.delta_lr,
                                            batch_size=scfg.batch_size,
                                            eval_every=scfg.eval_every, patience=scfg.patience))


def user_delta_unit(ctx, scfg: ClusterConfig, cluster_inputs: str) -> Unit:
    """Per-user deltas: one fleet per cluster, each adapter on one user's training turns."""
    name = "train/cluster_lora_users"

    def work() -> dict:
        out = {}
        for cluster, members in read_assignment(ctx, scfg)["clusters"].items():
            groups, vals = user_groups(ctx, "train", members), user_groups(ctx, "val", members)
            out[cluster] = fleet_unit(ctx, f"{name}/{cluster}", groups, vals,
                                      delta_spec(ctx, scfg, cluster), [cluster_inputs]).fn()
        return {"clusters": out, "adapters": sum(r["adapters"] for r in out.values())}

    inputs = training_inputs(ctx, name, delta_spec(ctx, scfg, "*"), [cluster_inputs])
    return Unit(name, inputs, work, [USERS_FOLDER])


def stages(ctx, scfg: ClusterConfig) -> list[list[Unit]]:
    check_config(scfg)
    assign = assign_unit(ctx, scfg)
    first = [u for stage in unified.unified_stages(ctx) for u in stage] \
        if scfg.init == "unified" else []
    fleet = cluster_fleet_unit(ctx, scfg, assign.inputs)
    out = [first + [assign], [fleet]]
    if scfg.user_deltas:
        out.append([user_delta_unit(ctx, scfg, fleet.inputs)])
    return out


def run_assignment(ctx, scfg: ClusterConfig) -> dict:
    """Run (or reuse) only the assignment unit; returns the assignment record."""
    check_config(scfg)
    unit = assign_unit(ctx, scfg)
    ctx.run.run_unit(unit.name, unit.inputs, unit.fn, unit.outputs)
    return read_assignment(ctx, scfg)


# --- Prediction ------------------------------------------------------------------------------

def routing_table(record: dict, deltas: dict[str, list[str]]
                  ) -> tuple[list[str], dict[str, int]]:
    """(run-relative adapter folders, persona -> slot): a user with a delta adapter goes to
    it, every other user to their cluster's adapter. `deltas`: cluster -> users with one."""
    names = sorted(record["clusters"])
    folders = [f"{FOLDER}/{c}" for c in names]
    slot = {pid: names.index(c) for pid, c in record["assignment"].items()}
    for c in names:
        for pid in deltas.get(c, []):
            folders.append(f"{USERS_FOLDER}/{c}/{pid}")
            slot[pid] = len(folders) - 1
    return folders, slot


def predictor(ctx, scfg: ClusterConfig):
    record = read_assignment(ctx, scfg)
    unseen = [p for p in ctx.eval_personas() if p not in record["assignment"]]
    if unseen:  # a new population (`personal eval --data`): placed as cold-start users are
        placed = place_users(ctx.dataset, ctx.splits, scfg, record, unseen)
        record = {**record, "assignment": {**record["assignment"], **placed}}
    deltas = {c: sorted(user_groups(ctx, "train", members))
              for c, members in record["clusters"].items()} if scfg.user_deltas else {}
    folders, slot = routing_table(record, deltas)

    def route(e) -> int:
        if e.persona_id not in slot:
            raise PersonalError(f"cluster_lora: user {e.persona_id} is in no cluster")
        return slot[e.persona_id]

    return routed_predictor(ctx, [ctx.run.path / f for f in folders], route)


def routes(ctx, scfg: ClusterConfig) -> RouteTable:
    """persona -> cluster adapter (or the user's delta) from clusters/cluster_lora.json;
    unknown ids the unified adapter when the run has it, else the base."""
    record = read_assignment(ctx, scfg)
    deltas = {c: sorted(user_groups(ctx, "train", members))
              for c, members in record["clusters"].items()} if scfg.user_deltas else {}
    folders, slot = routing_table(record, deltas)
    users = {str(p): Route.one(folders[k]) for p, k in slot.items()}
    return RouteTable(NAME, users, unknown_fallback(ctx))


register_strategy(NAME, config=ClusterConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase1", "curve"), position=50,
                  expected_seconds={"train/cluster_lora": 240.0, "assign/": 70.0},
                  cold_start="the adapter of the nearest cluster centroid, placed by the "
                             "features of the sessions the user has")
