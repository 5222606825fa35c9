"""retrieval: the unified adapter with the user's own top-k past exchanges in the prompt
(`retrieval`), or a unified adapter trained on such prompts (`retrieval_trained`).

Each user's training turns are indexed (faiss inner product over MiniLM embeddings of the user
message + session context); a turn's prompt gets the k best of the SAME user's past exchanges
(by similarity, recency or a weighted hybrid) as raw exchanges, a summary of usual settings or
preference statements, through the chat format's `extra_context` hook. A small model cannot
use retrieved examples it never saw in training: `retrieval_trained` continues the unified
adapter (or a fresh one) for a fraction of an epoch on retrieval-augmented prompts, each
training turn retrieving from its user's OTHER training sessions.

    personal train retrieval strategy.retrieval.k=5 strategy.retrieval.method=hybrid
    personal train retrieval_trained strategy.retrieval_trained.format=summary
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from peft import PeftModel

from personal.data.embed import embed
from personal.data.schema import Example
from personal.engine.generate import generate
from personal.errors import PersonalError
from personal.hashing import stable_hash
from personal.models.chat import system_text
from personal.models.lora import attach_lora, merged_for_inference, spread_sample, train_lora
from personal.strategies import unified
from personal.strategies.common import fleet_schedule
from personal.strategies.keys import training_inputs as unit_inputs
from personal.strategies.registry import Unit, register_strategy, servable
from personal.strategies.retrieval_index import (FORMATS, METHODS, Retriever, RetrievalSettings,
                                                 build_memory, last_user_message, memory_texts,
                                                 query_text, split_rows)
from personal.strategies.routes import Decision, Route, RouteTable

TRAINED = "adapters/retrieval_trained"
INDEX_DIR = "retrieval"
#: Version of what an index row holds (key text recipe + embedder); bump when either changes.
INDEX_RECIPE = "user-message+context|all-MiniLM-L6-v2|float16"


@dataclass
class RetrievalConfig:
    """Retrieval-augmented prompts on the unified adapter (adapter from `lora` / `train`)."""

    k: int = 3
    """Past exchanges retrieved per turn (0: none, exactly the unified prompt)."""
    method: str = "similarity"
    """How they are ranked: `similarity` (cosine of MiniLM embeddings of user message +
    context), `recency` (latest sessions first) or `hybrid` (weighted sum of both)."""
    hybrid_weight: float = 0.5
    """Weight of similarity in `hybrid` (recency gets 1 - weight; both lie in [0, 1])."""
    format: str = "raw"
    """How they enter the prompt: `raw` exchanges ("User: ... / Assistant: ..."), a `summary`
    of the settings they made ("Usual settings: ac temperature 22 (2x), ..."), or
    `preferences` (one "When <context>: <settings>." statement per exchange)."""
    exchange_chars: int = 160
    """Characters per raw exchange (user message at most half, the reply the rest): ~50
    tokens of the built-in base, so k=3 raw exchanges fit `context_tokens`."""
    context_tokens: int = 160
    """Token budget of the retrieved block, never more than half of the prompt's room
    (model.max_seq_len - generation.max_new_tokens; 160 by default) nor so much that the
    latest user message would be cut: the history keeps the rest (dropped oldest first).
    The worst-ranked pieces are dropped until the block fits, so raw exchanges beyond ~3
    and summaries beyond ~10 exchanges add nothing at 384 tokens."""


@dataclass
class RetrievalTrainedConfig(RetrievalConfig):
    """`retrieval` with an adapter trained on retrieval-augmented prompts."""

    init: str = "unified"
    """Start from the run's `unified` adapter (trained too) or a fresh one on the `base`."""
    epochs: Optional[float] = 0.25
    """Passes over the training turns. Retrieved context does not pack into sessions: one
    sequence per turn, so a pass costs ~5x the tokens of a packed unified pass (raw, k=3:
    165k vs 33k tokens on 5 default users). A quarter costs about one unified epoch and
    shows the adapter ~5.6k retrieval prompts on the default data."""
    lr: Optional[float] = 1e-3
    """Peak learning rate (None: train.lr); below the unified run's, as a continuation."""
    batch_size: Optional[int] = None
    """Turns per step (None: train.batch_size)."""
    eval_every: Optional[int] = None
    """Validation checks every N steps (None: train.eval_every; 0: once per epoch)."""
    patience: Optional[int] = None
    """Checks without improvement before stopping (None: train.patience)."""


def check(scfg: RetrievalConfig) -> None:
    """A PersonalError naming the bad option, before any work is done."""
    bad = []
    if scfg.k < 0:
        bad.append(f"k must be >= 0, got {scfg.k}")
    if scfg.method not in METHODS:
        bad.append(f"method must be one of {', '.join(METHODS)}, got {scfg.method!r}")
    if scfg.format not in FORMATS:
        bad.append(f"format must be one of {', '.join(FORMATS)}, got {scfg.format!r}")
    if not 0.0 <= scfg.hybrid_weight <= 1.0:
        bad.append(f"hybrid_weight must lie in [0, 1], got {scfg.hybrid_weight}")
    if scfg.exchange_chars < 20 or scfg.context_tokens < 1:
        bad.append("exchange_chars must be >= 20 and context_tokens >= 1")
    if isinstance(scfg, RetrievalTrainedConfig) and scfg.init not in ("unified", "base"):
        bad.append(f"init must be 'unified' or 'base', got {scfg.init!r}")
    if bad:
        raise PersonalError("strategy retrieval: " + "; ".join(bad))


def settings(scfg: RetrievalConfig) -> RetrievalSettings:
    return RetrievalSettings(k=scfg.k, method=scfg.method, hybrid_weight=scfg.hybrid_weight,
                             format=scfg.format, exchange_chars=scfg.exchange_chars)


def uses_index(scfg: RetrievalConfig) -> bool:
    """Only similarity and hybrid ranking need embeddings of the memory."""
    return scfg.k > 0 and scfg.method != "recency"


def memory_personas(ctx, trained: bool) -> list[str]:
    """Users whose exchanges are indexed: the evaluated ones, plus the training users when
    an adapter is trained on retrieval prompts (dataset order). A new population
    (`ctx.population`) is all cold-start: each turn retrieves from its own user's memory, so
    its prompts need only the new users' exchanges, not the training users' again."""
    train_too = trained and not ctx.population
    wanted = set(ctx.eval_personas()) | (set(ctx.training_personas()) if train_too else set())
    return [p.persona_id for p in ctx.dataset.personas if p.persona_id in wanted]


# --- The index unit -------------------------------------------------------------------------

def index_inputs(ctx, personas: list[str]) -> str:
    # a new population's users may reuse the names of another's: its fingerprint keys it
    extra = [ctx.population] if ctx.population else []
    return stable_hash("retrieval/index", ctx.fingerprint, personas, INDEX_RECIPE, *extra)


def index_path(ctx, personas: list[str]) -> Path:
    return ctx.run.path / INDEX_DIR / f"index_{index_inputs(ctx, personas)}.npy"


def memory_vectors(ctx, memory: dict) -> np.ndarray:
    """Embeddings of every memory exchange (rows in `memory_texts` order): read from the run
    when the index file is there, else embedded (each distinct text once) and written.
    Kept in half precision on disk (17 MB for the default 22k turns) and used as read, so a
    fresh process retrieves exactly what the first one did."""
    path = index_path(ctx, list(memory))
    texts = memory_texts(memory)
    if path.is_file():
        vectors = np.load(path)
        if len(vectors) == len(texts):
            return vectors.astype(np.float32)
    vectors = embed(texts).astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)  # atomic: a killed unit never leaves half an index
    return vectors.astype(np.float32)


def index_unit(ctx, name: str, personas: list[str]) -> Unit:
    """Embed the memory of `personas` into `retrieval/index_<inputs>.npy`, and the queries of
    the evaluated turns into the embedding cache: both retrieval evaluations need them, and
    two lanes running those at once each embedded all 7,540 (~130 s apiece)."""
    def work() -> dict:
        memory = build_memory(ctx.dataset, ctx.splits, personas)
        vectors = memory_vectors(ctx, memory)
        turns = ctx.examples(ctx.cfg.eval.split, ctx.eval_personas())
        embed([query_text(e) for e in turns])
        return {"users": len(memory), "exchanges": int(len(vectors)), "queries": len(turns)}

    path = index_path(ctx, personas).relative_to(ctx.run.path)
    return Unit(f"{name}/index", index_inputs(ctx, personas), work, [str(path)],
                needs_base=False)


#: Tokens the chat template adds around the system and the latest user message (role
#: markers, end-of-turn tokens, the generation prompt); generous for the built-in and Qwen.
TEMPLATE_TOKENS = 16


def block_budget(ctx, scfg: RetrievalConfig, count_tokens: Callable[[list[str]], list[int]]
                 ) -> Callable[[Example], int]:
    """Tokens the retrieved block of an example may use: `context_tokens`, at most half of the
    prompt's room, and never so many that the system text and the latest user message no
    longer fit (the format drops history oldest first, and the request itself must stay)."""
    room = ctx.cfg.model.max_seq_len - ctx.cfg.generation.max_new_tokens
    cap = min(scfg.context_tokens, max(room // 2, 1))
    characters = ctx.prompt_format().characters

    def budget(example: Example) -> int:
        system = system_text(example.meta, characters.get(example.persona_id))
        reserve = sum(count_tokens([system, last_user_message(example.history)]))
        return min(cap, room - reserve - TEMPLATE_TOKENS)

    return budget


def token_counter(tokenizer) -> Callable[[list[str]], list[int]]:
    """texts -> their token counts, each distinct text tokenized once (in one batched call
    for what is new). The same exchanges, headers and system texts recur across a user's
    ~110 turns, and byte-level BPE costs ~0.3 us a character here."""
    sizes: dict[str, int] = {}

    def count(texts: list[str]) -> list[int]:
        missing = [t for t in dict.fromkeys(texts) if t not in sizes]
        if missing:
            ids = tokenizer(missing, add_special_tokens=False)["input_ids"]
            sizes.update(zip(missing, map(len, ids)))
        return [sizes[t] for t in texts]

    return count


def load_retriever(ctx, scfg: RetrievalConfig, personas: list[str]) -> Retriever:
    """The hook over `personas`' memory, with the run's tokenizer counting the budget."""
    memory = build_memory(ctx.dataset, ctx.splits, personas)
    vectors = split_rows(memory, memory_vectors(ctx, memory)) if uses_index(scfg) else None
    count = token_counter(ctx.base[1])
    return Retriever(memory, vectors, settings(scfg), count, block_budget(ctx, scfg, count),
                     embed_queries=embed)


def retrieval_format(ctx, retriever: Retriever):
    """The run's prompt format with the retrieved block; k=0 is exactly the plain format."""
    return ctx.prompt_format(extra_context=retriever if retriever.settings.k > 0 else None)


# --- The two strategies ---------------------------------------------------------------------

def stages(ctx, scfg: RetrievalConfig) -> list[list[Unit]]:
    check(scfg)
    index = [index_unit(ctx, "retrieval", memory_personas(ctx, False))] if uses_index(scfg) else []
    # one stage: the index does not depend on the adapter, so the two can run side by side
    return [unified.unified_stages(ctx)[0] + index]


def trained_stages(ctx, scfg: RetrievalTrainedConfig) -> list[list[Unit]]:
    check(scfg)
    first = unified.unified_stages(ctx)[0] if scfg.init == "unified" else []
    if uses_index(scfg):
        first.append(index_unit(ctx, "retrieval_trained", memory_personas(ctx, True)))
    return [first, [train_unit(ctx, scfg)]] if first else [[train_unit(ctx, scfg)]]


def train_unit(ctx, scfg: RetrievalTrainedConfig) -> Unit:
    upstream = unified.training_inputs(ctx) if scfg.init == "unified" else None
    inputs = unit_inputs(ctx, "retrieval_trained", ctx.cfg.generation.max_new_tokens,
                         dataclasses.asdict(scfg), upstream, INDEX_RECIPE)
    return Unit("train/retrieval_trained", inputs, lambda: train_with_retrieval(ctx, scfg),
                [TRAINED])


def start_adapter(ctx, init: str):
    """The adapter training starts from: the unified one (trainable) or a fresh LoRA."""
    model = ctx.base[0]
    if init == "base":
        return attach_lora(model, ctx.cfg.lora)
    folder = ctx.run.path / unified.ADAPTER
    if not (folder / "adapter_config.json").is_file():
        raise PersonalError(f"{folder}: unified adapter not trained yet (init=unified)")
    return PeftModel.from_pretrained(copy.deepcopy(model), str(folder), is_trainable=True)


def train_with_retrieval(ctx, scfg: RetrievalTrainedConfig) -> dict:
    """`train_lora`'s loop from `init`, on training turns whose prompts carry what their
    user's other training sessions retrieve (own session excluded by the retriever)."""
    personas, tokenizer = ctx.training_personas(), ctx.base[1]
    tcfg = fleet_schedule(ctx, scfg)
    train_ex = ctx.examples("train", personas)
    val_ex = spread_sample(ctx.examples("val", personas), tcfg.max_val_examples)
    retriever = load_retriever(ctx, scfg, memory_personas(ctx, True))
    retriever.prepare(train_ex + val_ex)
    result = train_lora(ctx.base[0], tokenizer, train_ex, val_ex, ctx.cfg.lora, tcfg,
                        out_dir=ctx.run.path / TRAINED, progress=ctx.progress,
                        fmt=retrieval_format(ctx, retriever),
                        start=lambda: start_adapter(ctx, scfg.init),
                        desc="train retrieval adapter")
    return {k: v for k, v in result.to_dict().items() if k != "train_losses"}


def predictor(ctx, scfg: RetrievalConfig):
    """Both variants: their adapter, prompts carrying each turn's retrieved block."""
    trained = isinstance(scfg, RetrievalTrainedConfig)
    check(scfg)
    if trained:
        folder = ctx.run.path / TRAINED
        if not (folder / "adapter_config.json").is_file():
            raise PersonalError(f"{folder}: not trained yet; run `personal train "
                                f"retrieval_trained` first")
        model = merged_for_inference(
            PeftModel.from_pretrained(copy.deepcopy(ctx.base[0]), str(folder)))
    else:
        model = unified.load_unified(ctx)
    retriever = load_retriever(ctx, scfg, memory_personas(ctx, trained))
    fmt = retrieval_format(ctx, retriever)

    def predict(examples):
        retriever.prepare(examples)  # one embedding batch for all queries
        return generate(model, ctx.base[1], examples, ctx.cfg.generation, fmt=fmt,
                        progress=ctx.progress)

    return predict


# --- Serving -------------------------------------------------------------------------------

def adapter_folder(scfg: RetrievalConfig) -> str:
    return TRAINED if isinstance(scfg, RetrievalTrainedConfig) else unified.ADAPTER


def routes(ctx, scfg: RetrievalConfig) -> RouteTable:
    """Every user gets the one adapter; the request router adds each request's block."""
    return RouteTable("retrieval_trained" if isinstance(scfg, RetrievalTrainedConfig)
                      else "retrieval", {}, Route.one(adapter_folder(scfg)))


class RetrievalRouter:
    """The Serve app's request router: the run's retrieval memory (the users' training
    exchanges, their index from the run) and each request's block, built as offline
    evaluation builds it; the response names the exchanges retrieved."""

    def __init__(self, ctx, scfg: RetrievalConfig):
        check(scfg)
        self.retriever = load_retriever(
            ctx, scfg, memory_personas(ctx, isinstance(scfg, RetrievalTrainedConfig)))
        self.route = Route.one(adapter_folder(scfg))

    def decide(self, examples) -> list[Decision]:
        out = []
        for block, exchanges in self.retriever.blocks(examples):
            ids = [{"session": x.session_id, "turn": x.turn_index} for x in exchanges]
            out.append(Decision(self.route, block, {"retrieved": ids}))
        return out

register_strategy("retrieval", config=RetrievalConfig, stages=stages, predictor=predictor,
                  serving=servable(routes, request_router=RetrievalRouter), plans=("phase1",),
                  position=60,
                  expected_seconds={"eval/retrieval": 265.0, "retrieval/index": 430.0},
                  cold_start="retrieval over the sessions the user has (their validation "
                             "sessions)")
register_strategy("retrieval_trained", config=RetrievalTrainedConfig, stages=trained_stages,
                  predictor=predictor, serving=servable(routes, request_router=RetrievalRouter),
                  plans=("phase1", "curve"),
                  position=70,
                  expected_seconds={"train/retrieval_trained": 290.0,
                                    "eval/retrieval_trained": 150.0,
                                    "retrieval_trained/index": 1.0},
                  cold_start="retrieval over the sessions the user has, on the adapter "
                             "trained with retrieved context")
