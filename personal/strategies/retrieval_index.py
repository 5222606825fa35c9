"""A per-user memory of past exchanges for retrieval-augmented prompts: what is indexed, how a
test turn's top-k exchanges are ranked, and how they are written into the prompt.

    memory = build_memory(dataset, splits, personas)     # each user's exchanges, oldest first
    retriever = Retriever(memory, vectors, settings, count_tokens, budget=160)
    fmt = ctx.prompt_format(extra_context=retriever)      # retriever(example) -> text or None

An exchange is one assistant turn of a user's memory sessions (train, or val for a cold-start
user) with the user message right before it. Its key is that message plus the rendered session
context; a test turn's query is built the same way. Only the SAME user's exchanges are ever
candidates, and never those of the query's own session.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from personal.data.examples import session_examples
from personal.data.schema import Actions, Dataset, Example, Message, Meta, Splits
from personal.data.splits import training_sessions
from personal.errors import PersonalError
from personal.eval.parser import clean_actions, parse_actions
from personal.models.chat import render_context

METHODS = ("similarity", "recency", "hybrid")
FORMATS = ("raw", "summary", "preferences")
#: Headers of the three formats (the block the prompt gets starts with one of them).
HEADERS = {"raw": "Past exchanges with this user:", "summary": "Usual settings:",
           "preferences": "Known preferences:"}


@dataclass(frozen=True)
class Exchange:
    """One past assistant turn of a user, with what led to it."""

    persona_id: str
    session_id: int
    position: int
    """Place of the session in the user's history (0 = first): what recency ranks by."""
    turn_index: int
    user: str
    """The last user message before the assistant turn ("" if none)."""
    assistant: str
    actions: Actions
    """Settings of the turn: the gold actions, else what the action parser reads."""
    meta: Meta

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.persona_id, self.session_id, self.turn_index)


@dataclass(frozen=True)
class RetrievalSettings:
    """How exchanges are chosen and rendered: the retrieval fields of the strategy config,
    which documents them and holds their defaults."""

    k: int
    method: str
    hybrid_weight: float
    format: str
    exchange_chars: int


# --- The memory -----------------------------------------------------------------------------

def last_user_message(history: Sequence[Message]) -> str:
    """Text of the last user message of `history` ("" when there is none)."""
    return next((m.text for m in reversed(history) if m.role == "user"), "")


def query_text(example: Example) -> str:
    """What a turn is searched (and indexed) by: its user message and its session context."""
    return f"{last_user_message(example.history)}\n{render_context(example.meta)}"


def exchange_key_text(x: Exchange) -> str:
    """The indexed text of an exchange: `query_text` of the turn it came from."""
    return f"{x.user}\n{render_context(x.meta)}"


def turn_actions(example: Example) -> Actions:
    """Gold settings of a turn, or the parser's reading of its text when there are none."""
    return clean_actions(example.actions if example.actions is not None
                         else parse_actions(example.target))


def build_memory(ds: Dataset, splits: Splits, personas: Sequence[str]
                 ) -> dict[str, list[Exchange]]:
    """Each persona's exchanges from its memory sessions (train; val for a cold-start user),
    oldest first. Personas outside `splits` get an empty memory."""
    by_id, out = ds.by_id(), {}
    for pid in personas:
        out[pid] = []
        if pid not in splits:
            continue
        persona = by_id[pid]
        for position in training_sessions(splits[pid]):
            session = persona.sessions[position]
            for e in session_examples(persona, session, len(session.messages)):
                out[pid].append(Exchange(pid, e.session_id, position, e.turn_index,
                                         last_user_message(e.history), e.target,
                                         turn_actions(e), e.meta))
    return out


def memory_texts(memory: dict[str, list[Exchange]]) -> list[str]:
    """Key texts of every exchange, users in `memory` order: the rows of the index."""
    return [exchange_key_text(x) for xs in memory.values() for x in xs]


def split_rows(memory: dict[str, list[Exchange]], vectors: np.ndarray) -> dict[str, np.ndarray]:
    """The index rows of each user (inverse of `memory_texts`' order)."""
    out, start = {}, 0
    for pid, xs in memory.items():
        out[pid] = vectors[start:start + len(xs)]
        start += len(xs)
    if start != len(vectors):
        raise PersonalError(f"retrieval index has {len(vectors)} rows for {start} exchanges")
    return out


# --- Ranking --------------------------------------------------------------------------------

def recency_scores(exchanges: Sequence[Exchange]) -> np.ndarray:
    """Per exchange, its session's rank among the user's sessions scaled to [0, 1] (latest 1):
    on the same scale as a cosine, so the hybrid weight means what it says."""
    positions = sorted({x.position for x in exchanges})
    rank = {p: i for i, p in enumerate(positions)}
    top = max(len(positions) - 1, 1)
    return np.array([rank[x.position] / top if len(positions) > 1 else 1.0 for x in exchanges],
                    dtype=np.float64)


class UserIndex:
    """One user's exchanges with a faiss inner-product index over their unit-norm keys."""

    def __init__(self, exchanges: list[Exchange], vectors: Optional[np.ndarray]):
        self.exchanges = exchanges
        self.recency = recency_scores(exchanges)
        # Tie-break keys and sessions as arrays: ranking runs once per query turn (~30k).
        self._position = np.array([x.position for x in exchanges], dtype=np.int64)
        self._turn = np.array([x.turn_index for x in exchanges], dtype=np.int64)
        self._session = np.array([x.session_id for x in exchanges], dtype=np.int64)
        self.faiss = None
        if vectors is not None and len(exchanges):
            import faiss  # optional and heavy: only an index with vectors needs it

            self.faiss = faiss.IndexFlatIP(vectors.shape[1])
            self.faiss.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """Cosine of `query` with every exchange, in memory order."""
        if self.faiss is None:
            raise PersonalError("retrieval by similarity needs the index embeddings")
        n = len(self.exchanges)
        scores, rows = self.faiss.search(np.asarray(query, np.float32).reshape(1, -1), n)
        out = np.empty(n, dtype=np.float64)
        out[rows[0]] = scores[0]
        return out

    def top(self, example: Example, s: RetrievalSettings,
            query: Optional[np.ndarray] = None) -> list[Exchange]:
        """The `s.k` best exchanges for `example` by `s.method`, best first; exchanges of the
        example's own session are never candidates. Ties go to the more recent one."""
        if s.k <= 0 or not self.exchanges:
            return []
        if s.method == "recency":
            score = self.recency
        else:
            sims = self.similarities(query)
            w = 1.0 if s.method == "similarity" else s.hybrid_weight
            score = w * sims + (1.0 - w) * self.recency
        # Best score first, then the later session, then the later turn: a total order
        # (np.lexsort sorts by its last key first).
        order = np.lexsort((-self._turn, -self._position, -np.asarray(score, np.float64)))
        order = order[self._session[order] != example.session_id]
        return [self.exchanges[i] for i in order[:s.k]]


# --- Rendering ------------------------------------------------------------------------------

def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, a cut marked with "..."."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:max(limit - 3, 0)].rstrip() + "..."


def raw_pieces(exchanges: Sequence[Exchange], exchange_chars: int) -> list[str]:
    """One "User: ... / Assistant: ..." piece per exchange; the user message gets at most half
    of `exchange_chars`, the reply the rest (the reply is what shows the user's settings)."""
    out = []
    for x in exchanges:
        user = clip(x.user, exchange_chars // 2)
        out.append(f"User: {user}\nAssistant: {clip(x.assistant, exchange_chars - len(user))}")
    return out


def value_text(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def setting_text(device: str, param: str, value) -> str:
    return f"{device} {param.replace('_', ' ')} {value_text(value)}"


def summary_pieces(exchanges: Sequence[Exchange]) -> list[str]:
    """"ac temperature 22 (2x)" per setting found in the exchanges, most frequent first
    (ties: the one met first, i.e. in the better-ranked exchange)."""
    counts: dict[tuple, int] = {}
    for x in exchanges:
        for device, params in x.actions.items():
            for param, value in params.items():
                key = (device, param, value_text(value))
                counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts, key=lambda key: -counts[key])  # stable: first met wins a tie
    return [f"{setting_text(*key)} ({counts[key]}x)" for key in ranked]


def preference_pieces(exchanges: Sequence[Exchange]) -> list[str]:
    """One statement per exchange that set something: "- When <context>: ac temperature 22,
    mode heat; lights brightness 40." (repeats dropped)."""
    out: list[str] = []
    for x in exchanges:
        if not x.actions:
            continue
        when = render_context(x.meta)[len("Context: "):-1] if x.meta else "any time"
        settings = "; ".join(f"{device} " + ", ".join(f"{p.replace('_', ' ')} {value_text(v)}"
                                                      for p, v in params.items())
                             for device, params in x.actions.items())
        line = f"- When {when}: {settings}."
        if line not in out:
            out.append(line)
    return out


def join_pieces(fmt: str, pieces: Sequence[str]) -> str:
    """The block the prompt gets: the format's header, then its pieces."""
    if fmt == "summary":
        return f"{HEADERS[fmt]} " + ", ".join(pieces) + "."
    return "\n".join([HEADERS[fmt], *pieces])


def render(exchanges: Sequence[Exchange], s: RetrievalSettings,
           count_tokens: Callable[[list[str]], list[int]], budget: int) -> Optional[str]:
    """The retrieved exchanges as one block of at most `budget` tokens (the last pieces are
    dropped until it fits, the best-ranked come first), or None when there is nothing.
    `count_tokens` counts a batch of texts; the pieces are counted once (short texts) to
    pick how many fit, and only that block is counted whole, since counting every candidate
    block costs ~10x more on k=10 raw exchanges."""
    if s.format == "raw":
        pieces = raw_pieces(exchanges, s.exchange_chars)
    elif s.format == "summary":
        pieces = summary_pieces(exchanges)
    else:
        pieces = preference_pieces(exchanges)
    if not pieces:
        return None
    header, *sizes = count_tokens([HEADERS[s.format], *pieces])
    n = 0  # an estimate: one token per separator
    while n < len(pieces) and header + sum(sizes[:n + 1]) + n + 1 <= budget:
        n += 1
    n = max(n, 1)
    while n > 0:
        text = join_pieces(s.format, pieces[:n])
        if count_tokens([text])[0] <= budget:
            return text
        n -= 1
    return None


# --- The hook -------------------------------------------------------------------------------

class Retriever:
    """extra_context hook: example -> the block of its user's top-k past exchanges, or None.

    `vectors` (persona -> rows in memory order) are needed by `similarity` and `hybrid`;
    `embed_queries` (texts -> unit-norm rows) embeds the queries that are not memory keys;
    `count_tokens` counts a batch of texts; `budget` is the block's token limit, or a
    function of the example giving it.
    Call `prepare(examples)` first to embed a whole batch of queries at once."""

    def __init__(self, memory: dict[str, list[Exchange]],
                 vectors: Optional[dict[str, np.ndarray]], settings: RetrievalSettings,
                 count_tokens: Callable[[list[str]], list[int]],
                 budget: Callable[[Example], int] | int,
                 embed_queries: Optional[Callable[[list[str]], np.ndarray]] = None):
        self.settings, self.count_tokens = settings, count_tokens
        self.budget = budget if callable(budget) else (lambda example: budget)
        self.indexes = {pid: UserIndex(xs, (vectors or {}).get(pid)) for pid, xs in memory.items()}
        self.embed_queries = embed_queries
        self._known = {x.key: (exchange_key_text(x), vectors[pid][i])
                       for pid, xs in memory.items() if vectors and pid in vectors
                       for i, x in enumerate(xs)}
        self._texts: dict[tuple, Optional[str]] = {}

    @property
    def needs_queries(self) -> bool:
        return self.settings.k > 0 and self.settings.method != "recency"

    def prepare(self, examples: Sequence[Example]) -> None:
        """Compute the blocks of `examples`, embedding their queries in one batch."""
        todo = [e for e in examples if _key(e) not in self._texts and e.persona_id in self.indexes]
        vectors = self._query_vectors(todo)
        for e, v in zip(todo, vectors):
            self._texts[_key(e)] = self._block(e, v)

    def _query_vectors(self, examples: Sequence[Example]) -> list[Optional[np.ndarray]]:
        """A training turn's query is its own memory key: its row is reused, not re-embedded."""
        if not self.needs_queries:
            return [None] * len(examples)
        texts = [query_text(e) for e in examples]
        out = [self._memory_row(e, t) for e, t in zip(examples, texts)]
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            if self.embed_queries is None:
                raise PersonalError("retrieval: no query embedder given")
            rows = self.embed_queries([texts[i] for i in missing])
            for i, row in zip(missing, rows):
                out[i] = row
        return out

    def _memory_row(self, example: Example, text: str) -> Optional[np.ndarray]:
        known = self._known.get(_key(example))
        return known[1] if known is not None and known[0] == text else None

    def top(self, example: Example) -> list[Exchange]:
        """The exchanges retrieved for `example` (embeds its query if needed)."""
        index = self.indexes.get(example.persona_id)
        if index is None:
            return []
        return index.top(example, self.settings, self._query_vectors([example])[0])

    def _block(self, example: Example, query: Optional[np.ndarray]) -> Optional[str]:
        return self._retrieve(example, query)[0]

    def _retrieve(self, example: Example, query: Optional[np.ndarray]
                  ) -> tuple[Optional[str], list[Exchange]]:
        exchanges = self.indexes[example.persona_id].top(example, self.settings, query)
        return render(exchanges, self.settings, self.count_tokens, self.budget(example)), exchanges

    def blocks(self, examples: Sequence[Example]
               ) -> list[tuple[Optional[str], list[Exchange]]]:
        """(the block, the exchanges retrieved) of each example, computed afresh and never
        cached: served requests have no session of its own (session -1), so their cache
        keys would collide between requests of one user. The same example gives the block
        `__call__` gives."""
        if self.settings.k <= 0:
            return [(None, []) for _ in examples]
        known = [e for e in examples if e.persona_id in self.indexes]
        vectors = dict(zip(map(id, known), self._query_vectors(known)))
        return [self._retrieve(e, vectors[id(e)]) if id(e) in vectors else (None, [])
                for e in examples]

    def __call__(self, example: Example) -> Optional[str]:
        if self.settings.k <= 0 or example.persona_id not in self.indexes:
            return None
        if _key(example) not in self._texts:
            self.prepare([example])
        return self._texts[_key(example)]


def _key(example: Example) -> tuple[str, int, int]:
    return (example.persona_id, example.session_id, example.turn_index)
