"""Dataset statistics for `personal data stats`: what the data looks like, and the three
numbers that show it is worth personalizing on (issue 2, "Must be shown"):

(a) `identifiability`: users differ — TF-IDF (word 1–2-grams) + logistic regression trained
    on train-split assistant turns names the user of test-split assistant turns; compared
    with chance (1 / users).
(b) `archetype_silhouette`: users cluster — silhouette of standardized user feature vectors
    (training data only) grouped by `Persona.archetype`; skipped when archetypes are unknown.
(c) `noise_ceiling`: mean all-MiniLM-L6-v2 cosine similarity between each test assistant
    turn's text and its independent re-phrasing `alt_text`; skipped when there is none.
(d) `reply_baseline`: how far a reply follows from its request across users — each assistant
    turn answered, model-free, with the reply that followed the most similar user message in
    another user's dialogue (issue 18's protocol; 0.77 on real data). Needs only text, so it
    works on imported real data too.

Every number is a plain float / int / None so the dict prints as JSON unchanged.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Optional, Sequence

import numpy as np

from personal.data.embed import cosine_pairs, embed
from personal.data.features import (devices_mentioned, has_number, has_question, mentions_name,
                                    standardize, user_features, word_count)
from personal.data.schema import DEVICES, Dataset, Message, Splits
from personal.data.splits import SPLIT_NAMES, check_splits


def _split_turns(ds: Dataset, splits: Splits, part: str) -> list[tuple[str, Message]]:
    """(persona id, assistant message) of every assistant turn in `part`, in order."""
    out = []
    for p in ds.personas:
        if p.persona_id in splits:
            for i in getattr(splits[p.persona_id], part):
                out.extend((p.persona_id, m) for m in p.sessions[i].messages if m.role == "assistant")
    return out


def _summary(values: list[float]) -> dict[str, Optional[float]]:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "median": float(np.median(a)),
            "min": float(a.min()), "max": float(a.max())}


def _share(flags: list[bool]) -> Optional[float]:
    return float(np.mean(flags)) if flags else None


def _per_user_mean(owners: Sequence[str], scores: Sequence[float]) -> float:
    """Mean over users of each user's mean score (the evaluation protocol's averaging)."""
    per_user: dict[str, list[float]] = defaultdict(list)
    for pid, s in zip(owners, scores):
        per_user[pid].append(float(s))
    return float(np.mean([np.mean(v) for v in per_user.values()]))


# --- Descriptive statistics ---------------------------------------------------------------

def split_counts(ds: Dataset, splits: Splits) -> dict[str, dict[str, int]]:
    """Per split: users with at least one session in it, sessions, assistant turns."""
    out = {}
    for part in SPLIT_NAMES:
        users = [pid for pid, sp in splits.items() if getattr(sp, part)]
        out[part] = {"users": len(users),
                     "sessions": sum(len(getattr(sp, part)) for sp in splits.values()),
                     "assistant_turns": len(_split_turns(ds, splits, part))}
    return out


def turn_stats(ds: Dataset) -> dict[str, Any]:
    """Shape and style of all sessions: turns per session, words per turn, question,
    number and name rates of assistant turns."""
    sessions = [s for p in ds.personas for s in p.sessions]
    asst = [(p, m) for p in ds.personas for s in p.sessions for m in s.messages if m.role == "assistant"]
    user = [m for p in ds.personas for s in p.sessions for m in s.messages if m.role == "user"]
    named = [(p, m) for p, m in asst if p.name]
    return {
        "messages_per_session": _summary([len(s.messages) for s in sessions]),
        "assistant_turns_per_session": _summary(
            [sum(m.role == "assistant" for m in s.messages) for s in sessions]),
        "words_per_turn": {"user": _summary([word_count(m.text) for m in user]),
                           "assistant": _summary([word_count(m.text) for _, m in asst])},
        "assistant_question_rate": _share([has_question(m.text) for _, m in asst]),
        "assistant_number_rate": _share([has_number(m.text) for _, m in asst]),
        "name_rate": _share([mentions_name(m.text, p.name) for p, m in named]),
        "gold_actions_share": _share([m.actions is not None for _, m in asst]),
        "alt_text_share": _share([m.alt_text is not None for _, m in asst]),
    }


def device_usage(ds: Dataset) -> dict[str, dict[str, Optional[float]]]:
    """Per device: share of assistant turns whose text mentions it (keywords), and share of
    turns with gold actions that set it (None without gold)."""
    asst = [m for p in ds.personas for s in p.sessions for m in s.messages if m.role == "assistant"]
    mentioned = [devices_mentioned(m.text) for m in asst]
    gold = [m.actions for m in asst if m.actions is not None]
    return {d: {"mentioned": _share([d in ms for ms in mentioned]),
                "gold": _share([d in g for g in gold])} for d in DEVICES}


# --- (a) identifiability --------------------------------------------------------------

def _fit_user_classifier(texts: list[str], labels: list[str], C: float):
    # sklearn (heavy, ~1 s) loads only when the statistics are computed, here and below
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True),
                          LogisticRegression(C=C, max_iter=1000))
    return model.fit(texts, labels)


def identifiability(ds: Dataset, splits: Splits, C: float = 10.0) -> dict[str, Any]:
    """Accuracy of naming the user of test-split assistant turns with TF-IDF (word 1–2-grams)
    + logistic regression trained on train-split assistant turns, vs chance = 1 / users.

    `C` is the inverse L2 strength; 10 (weak regularisation, usual for sparse TF-IDF) is
    fixed, not tuned on the test turns. Only users with training turns can be named, so
    cold-start users' turns are left out.
    `accuracy_alt_text` scores the same classifier on the test turns' `alt_text`
    re-phrasings (same user, same settings, other words): the share of identity that survives
    re-phrasing rather than verbatim phrase reuse. None when there is no alt_text.
    """
    start = time.perf_counter()
    check_splits(ds, splits)
    train = _split_turns(ds, splits, "train")
    users = sorted({pid for pid, _ in train})
    test = [(pid, m) for pid, m in _split_turns(ds, splits, "test") if pid in set(users)]
    out: dict[str, Any] = {"accuracy": None, "chance": 1 / len(users) if users else None,
                           "accuracy_alt_text": None, "users": len(users),
                           "train_turns": len(train), "test_turns": len(test),
                           "alt_text_turns": 0, "note": ""}
    if len(users) < 2 or not test:
        out["note"] = "skipped: needs at least 2 users with train turns and some test turns"
        return out
    model = _fit_user_classifier([m.text for _, m in train], [pid for pid, _ in train], C)
    labels = np.array([pid for pid, _ in test])
    out["accuracy"] = float(np.mean(model.predict([m.text for _, m in test]) == labels))
    alt = [(pid, m.alt_text) for pid, m in test if m.alt_text is not None]
    out["alt_text_turns"] = len(alt)
    if alt:
        pred = model.predict([t for _, t in alt])
        out["accuracy_alt_text"] = float(np.mean(pred == np.array([pid for pid, _ in alt])))
    out["seconds"] = time.perf_counter() - start
    return out


# --- (b) archetype silhouette -----------------------------------------------------------

def archetype_silhouette(ds: Dataset, splits: Splits) -> dict[str, Any]:
    """Silhouette (euclidean) of standardized user feature vectors grouped by archetype.
    Skipped, with a note, when any persona's archetype is unknown (real data) or there are
    fewer than 2 archetypes or no archetype with fewer members than users."""
    start = time.perf_counter()
    personas = [p for p in ds.personas if p.persona_id in splits]
    out: dict[str, Any] = {"silhouette": None, "users": len(personas), "archetypes": 0, "note": ""}
    if not personas or any(p.archetype is None for p in personas):
        out["note"] = "skipped: archetypes unknown (real data carries none)"
        return out
    labels = [p.archetype for p in personas]
    out["archetypes"] = len(set(labels))
    if not 2 <= len(set(labels)) < len(labels):
        out["note"] = "skipped: silhouette needs 2 <= archetypes < users"
        return out
    from sklearn.metrics import silhouette_score

    feats = user_features(ds, splits)
    out["silhouette"] = float(silhouette_score(standardize(feats.matrix), labels))
    out["features"] = len(feats.names)
    out["seconds"] = time.perf_counter() - start
    return out


# --- (c) noise ceiling ----------------------------------------------------------------

def _even_subsample(n: int, k: Optional[int]) -> np.ndarray:
    """`k` indices spread evenly over range(n) (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def noise_ceiling(ds: Dataset, splits: Splits, max_turns: Optional[int] = None) -> dict[str, Any]:
    """Mean all-MiniLM-L6-v2 cosine similarity of each test assistant turn's text with its
    `alt_text` (batched embeddings, `personal.data.embed`). `max_turns` keeps that many
    pairs spread evenly over the test turns. Also the mean of per-user means (the
    evaluation protocol averages per user first). Skipped, with a note, without alt_text."""
    start = time.perf_counter()
    check_splits(ds, splits)
    pairs = [(pid, m.text, m.alt_text) for pid, m in _split_turns(ds, splits, "test")
             if m.alt_text is not None]
    out: dict[str, Any] = {"noise_ceiling": None, "per_user_mean": None, "pairs": 0, "note": ""}
    if not pairs:
        out["note"] = "skipped: no test assistant turn carries alt_text"
        return out
    pairs = [pairs[i] for i in _even_subsample(len(pairs), max_turns)]
    sims = cosine_pairs([a for _, a, _ in pairs], [b for _, _, b in pairs]).astype(np.float64)
    out.update(noise_ceiling=float(sims.mean()), pairs=len(pairs),
               per_user_mean=_per_user_mean([pid for pid, _, _ in pairs], sims),
               min=float(sims.min()), max=float(sims.max()))
    out["seconds"] = time.perf_counter() - start
    return out


# --- (d) reply baseline -------------------------------------------------------------------

def _sample_session(n_sessions: int, session: str) -> int:
    """Index of the one session per user the reply baseline reads (`first` | `middle` | `last`)."""
    return {"first": 0, "middle": n_sessions // 2, "last": n_sessions - 1}[session]


def _exchanges(ds: Dataset, session: str, max_messages: int) -> list[tuple[str, str, str]]:
    """(persona id, user message, the assistant reply right after it) for the first
    `max_messages` messages of one session per user."""
    out = []
    for p in ds.personas:
        if not p.sessions:
            continue
        msgs = p.sessions[_sample_session(len(p.sessions), session)].messages[:max_messages]
        out.extend((p.persona_id, a.text, b.text) for a, b in zip(msgs, msgs[1:])
                   if a.role == "user" and b.role == "assistant")
    return out


REPLY_SESSIONS = ("first", "middle", "last")


def reply_baseline(ds: Dataset, session: str = "middle", max_messages: int = 5,
                   embed_fn: Callable[[Sequence[str]], np.ndarray] = embed) -> dict[str, Any]:
    """Model-free reply baseline: for each assistant turn of the sample (one session per user,
    its first `max_messages` messages), the reply that followed the most similar user message
    (cosine of `embed_fn` vectors, MiniLM by default) in another user's sample, scored against
    the true reply by the same cosine. High when similar requests get similar replies across
    users, as in real data (0.77 on 200 real dialogues, first 5 messages each); a trained model
    that does not clear it has learned nothing a lookup table has not.
    Also the mean of per-user means, and how many turns were scored."""
    if session not in REPLY_SESSIONS:
        raise ValueError(f"session must be one of {', '.join(REPLY_SESSIONS)}, got {session!r}")
    if max_messages < 2:
        raise ValueError(f"max_messages must be at least 2, got {max_messages}")
    start = time.perf_counter()
    rows = _exchanges(ds, session, max_messages)
    out: dict[str, Any] = {"reply_baseline": None, "per_user_mean": None, "turns": len(rows),
                           "users": len({pid for pid, _, _ in rows}), "session": session,
                           "max_messages": max_messages, "note": ""}
    if out["users"] < 2:
        out["note"] = "skipped: needs assistant turns of at least 2 users"
        return out
    requests = np.asarray(embed_fn([u for _, u, _ in rows]), dtype=np.float64)
    replies = np.asarray(embed_fn([r for _, _, r in rows]), dtype=np.float64)
    owners = np.array([pid for pid, _, _ in rows])
    sim = requests @ requests.T
    sim[owners[:, None] == owners[None, :]] = -np.inf  # another user's dialogue only
    nearest = sim.argmax(axis=1)
    scores = np.einsum("ij,ij->i", replies, replies[nearest])
    out.update(reply_baseline=float(scores.mean()), per_user_mean=_per_user_mean(owners, scores),
               seconds=time.perf_counter() - start)
    return out


# --- All together -----------------------------------------------------------------------

def dataset_stats(ds: Dataset, splits: Splits, identify: bool = True, silhouette: bool = True,
                  ceiling: bool = True, ceiling_max_turns: Optional[int] = None,
                  baseline: bool = True, reply_session: str = "middle",
                  reply_messages: int = 5) -> dict[str, Any]:
    """Everything `personal data stats` prints; the "must be shown" parts can be switched off
    (their entry then says so). `reply_session` / `reply_messages` are the reply baseline's
    sample shape (one session per user, its first N messages)."""
    check_splits(ds, splits)
    out: dict[str, Any] = {
        "users": len(ds.personas),
        "sessions": sum(len(p.sessions) for p in ds.personas),
        "cold_start_users": sum(sp.cold_start for sp in splits.values()),
        "splits": split_counts(ds, splits),
        **turn_stats(ds),
        "devices": device_usage(ds),
    }
    skipped = {"note": "not requested"}
    out["identifiability"] = identifiability(ds, splits) if identify else dict(skipped)
    out["silhouette"] = archetype_silhouette(ds, splits) if silhouette else dict(skipped)
    out["noise_ceiling"] = noise_ceiling(ds, splits, ceiling_max_turns) if ceiling else dict(skipped)
    out["reply_baseline"] = (reply_baseline(ds, reply_session, reply_messages) if baseline
                             else dict(skipped))
    return out


# --- Text for the command line ------------------------------------------------------------

def _num(x: Optional[float], fmt: str = ".1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _format_shape(stats: dict[str, Any]) -> list[str]:
    lines = [f"Data: {stats['users']} users, {stats['sessions']} sessions, "
             f"{stats['cold_start_users']} cold-start users",
             "", f"{'split':<8}{'users':>8}{'sessions':>10}{'assistant turns':>17}"]
    for part, c in stats["splits"].items():
        lines.append(f"{part:<8}{c['users']:>8}{c['sessions']:>10}{c['assistant_turns']:>17}")
    lines += ["", f"{'per session':<26}{'mean':>7}{'min':>6}{'max':>6}"]
    for key, label in (("messages_per_session", "messages"), ("assistant_turns_per_session", "assistant turns")):
        s = stats[key]
        lines.append(f"{label:<26}{_num(s['mean']):>7}{_num(s['min'], '.0f'):>6}{_num(s['max'], '.0f'):>6}")
    lines += ["", f"{'words per turn':<26}{'mean':>7}{'median':>8}"]
    for role in ("user", "assistant"):
        s = stats["words_per_turn"][role]
        lines.append(f"{role:<26}{_num(s['mean']):>7}{_num(s['median']):>8}")
    return lines


def _format_style(stats: dict[str, Any]) -> list[str]:
    lines = ["", "assistant turns",
             f"  {'with a question':<30}{_pct(stats['assistant_question_rate']):>8}",
             f"  {'with a number':<30}{_pct(stats['assistant_number_rate']):>8}",
             f"  {'addressing the user by name':<30}{_pct(stats['name_rate']):>8}",
             f"  {'with gold actions':<30}{_pct(stats['gold_actions_share']):>8}",
             f"  {'with alt_text':<30}{_pct(stats['alt_text_share']):>8}",
             "", f"{'device':<10}{'mentioned':>11}{'gold':>9}"]
    for dev, d in stats["devices"].items():
        lines.append(f"{dev:<10}{_pct(d['mentioned']):>11}{_pct(d['gold']):>9}")
    return lines


def _format_must_show(stats: dict[str, Any]) -> list[str]:
    ident, sil, ceil = stats["identifiability"], stats["silhouette"], stats["noise_ceiling"]
    lines = ["", "must be shown"]
    if ident.get("accuracy") is not None:
        ratio = ident["accuracy"] / ident["chance"]
        lines.append(f"  (a) user identifiability  accuracy {ident['accuracy']:.3f} vs chance "
                     f"{ident['chance']:.3f} ({ratio:.0f}x), {ident['users']} users, "
                     f"{ident['test_turns']} test turns")
        if ident.get("accuracy_alt_text") is not None:
            lines.append(f"      on alt_text re-phrasings  accuracy {ident['accuracy_alt_text']:.3f}")
    else:
        lines.append(f"  (a) user identifiability  {ident.get('note', '')}")
    if sil.get("silhouette") is not None:
        lines.append(f"  (b) archetype silhouette  {sil['silhouette']:.3f} over {sil['users']} users, "
                     f"{sil['archetypes']} archetypes")
    else:
        lines.append(f"  (b) archetype silhouette  {sil.get('note', '')}")
    if ceil.get("noise_ceiling") is not None:
        lines.append(f"  (c) noise ceiling         {ceil['noise_ceiling']:.3f} mean MiniLM cosine "
                     f"(text, alt_text) over {ceil['pairs']} test turns "
                     f"(per-user mean {ceil['per_user_mean']:.3f})")
    else:
        lines.append(f"  (c) noise ceiling         {ceil.get('note', '')}")
    rb = stats["reply_baseline"]
    if rb.get("reply_baseline") is not None:
        lines.append(f"  (d) reply baseline        {rb['reply_baseline']:.3f} mean MiniLM cosine, "
                     f"nearest other user's request -> its reply, {rb['turns']} turns of "
                     f"{rb['users']} users ({rb['session']} session, first {rb['max_messages']} "
                     f"messages; real data 0.77)")
    else:
        lines.append(f"  (d) reply baseline        {rb.get('note', '')}")
    return lines


def format_stats(stats: dict[str, Any]) -> str:
    """`dataset_stats` output as aligned text sections for the command line."""
    return "\n".join(_format_shape(stats) + _format_style(stats) + _format_must_show(stats))
