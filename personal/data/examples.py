"""Examples: every assistant turn of the selected sessions becomes one `Example`, predicted
from the ground-truth history before it and the session context."""
from __future__ import annotations

from typing import Optional

from personal.data.schema import Dataset, Example, Persona, Session, Splits
from personal.data.splits import SPLIT_NAMES, check_splits, split_sessions
from personal.errors import PersonalError


def session_examples(persona: Persona, session: Session, history_messages: int = 6) -> list[Example]:
    """One Example per assistant message of `session`, in turn order; the history is the
    last `history_messages` messages right before the target (fewer at the start)."""
    out = []
    for t, msg in enumerate(session.messages):
        if msg.role != "assistant":
            continue
        start = max(0, t - history_messages)
        out.append(Example(
            persona_id=persona.persona_id,
            session_id=session.session_id,
            turn_index=t,
            meta=dict(session.meta) if session.meta is not None else None,
            history=list(session.messages[start:t]),
            target=msg.text,
            actions=msg.actions,
            alt_text=msg.alt_text,
        ))
    return out


def _selected_personas(ds: Dataset, splits: Splits, personas: Optional[list[str]]) -> list[Persona]:
    """Personas in dataset order, restricted to `personas` when given and to those the
    splits know (a published splits file may cover a subset)."""
    if personas is not None:
        known = ds.by_id()
        unknown = [pid for pid in personas if pid not in known]
        if unknown:
            raise PersonalError(f"unknown persona id(s): {', '.join(unknown)}")
        wanted = set(personas)
        missing = [pid for pid in personas if pid not in splits]
        if missing:
            raise PersonalError(f"persona(s) not in the splits: {', '.join(missing)}")
        return [p for p in ds.personas if p.persona_id in wanted]
    return [p for p in ds.personas if p.persona_id in splits]


def build_examples(ds: Dataset, splits: Splits, split: str = "train", history_messages: int = 6,
                   personas: Optional[list[str]] = None) -> list[Example]:
    """Every assistant turn of the `split` sessions of the selected personas as an Example.

    Order is deterministic: personas in dataset order, then sessions in split order, then
    turns in message order. `personas=None` means every persona in `splits`. Cold-start
    personas contribute nothing to `train` (their split has no train sessions).
    """
    if not isinstance(history_messages, int) or history_messages < 0:
        raise PersonalError(f"history_messages must be a non-negative integer, got {history_messages!r}")
    if split not in SPLIT_NAMES:
        raise PersonalError(f"unknown split {split!r}: expected train, val or test")
    check_splits(ds, splits)
    out: list[Example] = []
    for p in _selected_personas(ds, splits, personas):
        for idx in split_sessions(splits[p.persona_id], split):
            out.extend(session_examples(p, p.sessions[idx], history_messages))
    return out
