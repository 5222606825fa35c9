"""Read and write the canonical layout (three line-aligned JSONL files) and splits files.

Writing is deterministic: the same Dataset gives the same bytes (sorted nothing, insertion
order kept, UTF-8, one JSON value per line, `\\n` line ends), and reading what was written
gives the same Dataset back. Reading checks everything: `load_dataset` and `read_splits`
raise `DataError` naming every problem (the checks live in `personal.data.validate`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personal.data.schema import (Actions, Dataset, Message, Persona, Routine, Session, Splits,
                                  persona_id_for_line)
from personal.data.validate import (FILES, load_dataset, parse_splits, read_json_file,
                                    split_key_lines, validate_splits)
from personal.errors import DataError, Problem

# FILES and load_dataset are re-exported so callers can read and write through this module.


def actions_to_json(actions: Actions) -> dict[str, Any]:
    """Actions as stored: every touched device with its parameters (untouched ones omitted)."""
    return {dev: dict(params) for dev, params in actions.items()}


def message_to_json(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "text": m.text}
    if m.actions is not None:
        out["actions"] = actions_to_json(m.actions)
    if m.alt_text is not None:
        out["alt_text"] = m.alt_text
    if m.provenance is not None:
        out["provenance"] = dict(m.provenance)
    return out


def session_to_json(s: Session) -> dict[str, Any]:
    out: dict[str, Any] = {"session_id": s.session_id}
    if s.meta is not None:
        out["meta"] = dict(s.meta)
    out["messages"] = [message_to_json(m) for m in s.messages]
    if s.applied_routines is not None:
        out["applied_routines"] = list(s.applied_routines)
    if s.session_summarization is not None:
        out["session_summarization"] = s.session_summarization
    return out


def routine_to_json(r: Routine) -> dict[str, Any]:
    return {"triggers": dict(r.triggers), "actions": actions_to_json(r.actions)}


def character_to_json(p: Persona) -> Any:
    """A plain string, or the object form when the simulator adds name / archetype."""
    if p.archetype is None and p.name is None:
        return p.character
    out: dict[str, Any] = {"character": p.character}
    if p.name is not None:
        out["name"] = p.name
    if p.archetype is not None:
        out["archetype"] = p.archetype
    return out


def _character_line(p: Persona, index: int) -> Any:
    """The characters line of `p` at line `index`. The line index names the persona unless
    the line says otherwise, so a non-canonical id (e.g. from an import) is stored in the
    object form; canonical ids leave the line as `character_to_json` makes it."""
    value = character_to_json(p)
    if p.persona_id == persona_id_for_line(index):
        return value
    out: dict[str, Any] = {"persona_id": p.persona_id}
    out.update(value if isinstance(value, dict) else {"character": value})
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def write_dataset(ds: Dataset, path: str | Path) -> None:
    """Write `ds` as the canonical layout into folder `path` (created if missing)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rows = {
        "characters.jsonl": [_character_line(p, i) for i, p in enumerate(ds.personas)],
        "routines.jsonl": [[routine_to_json(r) for r in p.routines] for p in ds.personas],
        "sessions.jsonl": [[session_to_json(s) for s in p.sessions] for p in ds.personas],
    }
    for name, values in rows.items():
        with open(path / name, "w", encoding="utf-8", newline="\n") as f:
            for v in values:
                f.write(_dumps(v) + "\n")


def splits_to_json(splits: Splits) -> dict[str, Any]:
    out = {}
    for pid, sp in splits.items():
        entry: dict[str, Any] = {"train": list(sp.train), "val": list(sp.val), "test": list(sp.test)}
        if sp.cold_start:
            entry["cold_start"] = True
        out[pid] = entry
    return out


def write_splits(splits: Splits, path: str | Path) -> None:
    """Write a splits file in the DATA.md layout (`{persona_id: {train, val, test}}`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(splits_to_json(splits), indent=1) + "\n", encoding="utf-8")


def read_splits(path: str | Path, dataset: Dataset | None = None) -> Splits:
    """Read a splits file (`{persona_id: {train, val, test[, cold_start]}}` of session
    positions). With `dataset`, also check that every persona exists and every index is in
    range. Raises `DataError` naming every problem (file, line of the persona's entry,
    field path such as `persona_003.test[2]`)."""
    problems: list[Problem] = []
    value, text = read_json_file(path, problems)
    splits: Splits = {}
    if not problems:
        splits, found = parse_splits(value, str(path), text)
        problems += found
        if dataset is not None:
            problems += validate_splits(splits, dataset, str(path), split_key_lines(text))
    if not problems and dataset is not None:
        missing = [p.persona_id for p in dataset.personas if p.persona_id not in splits]
        if missing:
            problems.append(Problem(str(path), None, "", f"no entry for {len(missing)} persona(s) "
                                    f"of the dataset, e.g. {', '.join(missing[:3])}"))
    if not problems and splits and not any(split.train for split in splits.values()):
        problems.append(Problem(str(path), None, "", "every train list is empty: no persona "
                                "has a training session"))
    if problems:
        raise DataError(problems, header=f"{path}: invalid splits file")
    return splits
