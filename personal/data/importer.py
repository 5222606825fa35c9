"""Import the cleaned-dialogues layout (DATA.md, second layout) into the canonical one.

Input: one JSON object per dialogue line, `{"persona_id", "session_id", "messages"}` plus the
optional `character`, `routines`, `meta`, `applied_routines`, `session_summarization`; and a
splits file `{persona_id: {train, val, test}}` whose numbers are 0-based line indices into the
dialogue file. Dialogues are grouped per persona in file order, personas ordered by first
appearance; the returned Splits index positions in `Persona.sessions`, like every Splits in
the project. A dialogue without `meta` has an unknown context (`meta=None`), carried as such.
Import is strict: any problem raises `DataError` listing all of them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from personal.data.io import write_dataset, write_splits
from personal.data.schema import Dataset, Persona, Routine, Session, Split, Splits
from personal.data.validate import (SPLIT_PARTS, JsonLine, Site, is_index, kind, parse_routines,
                                    parse_session, parse_splits, read_json_file, read_json_lines,
                                    split_key_lines)
from personal.data.safety import name_problem
from personal.errors import DataError, Problem


@dataclass
class _Draft:
    """A persona while its dialogues are collected; `*_line` remember where a value came
    from, to name it when a later dialogue contradicts it."""

    persona_id: str
    character: Optional[str] = None
    character_line: int = 0
    routines_json: Any = None
    routines: list[Routine] = field(default_factory=list)
    routines_line: int = 0
    routines_ok: bool = True
    """False when the persona's routines are not a list: their count is unknown."""
    sessions: list[Session] = field(default_factory=list)
    session_lines: list[int] = field(default_factory=list)
    session_id_line: dict[int, int] = field(default_factory=dict)


def _take_profile(draft: _Draft, value: dict, site: Site) -> None:
    """Character and routines may repeat on every dialogue of a persona; they must agree."""
    character = value.get("character")
    if character is not None and not isinstance(character, str):
        site.problem("character", f"expected a string or null, got {kind(character)}")
    elif character is not None and draft.character is None:
        draft.character, draft.character_line = character, site.line
    elif character is not None and character != draft.character:
        site.problem("character", f"differs from the character of {draft.persona_id} on line "
                     f"{draft.character_line}; a persona has one character")
    routines = value.get("routines")
    if routines is None:
        return
    if draft.routines_json is None:
        parsed = parse_routines(routines, site, "routines")
        draft.routines, draft.routines_ok = parsed or [], parsed is not None
        draft.routines_json, draft.routines_line = routines, site.line
    elif routines != draft.routines_json:
        site.problem("routines", f"differ from the routines of {draft.persona_id} on line "
                     f"{draft.routines_line}; a persona has one list of routines")


def _take_session(draft: _Draft, value: dict, site: Site) -> int:
    """Append the dialogue as the persona's next session; return its position."""
    session = parse_session(value, site, "", n_routines=None)  # routines may come later
    sid = session.session_id if session is not None else None
    if is_index(sid) and sid in draft.session_id_line:
        site.problem("session_id", f"duplicate session id {sid} for {draft.persona_id}, already "
                     f"used on line {draft.session_id_line[sid]}")
    elif is_index(sid):
        draft.session_id_line[sid] = site.line
    draft.sessions.append(session)
    draft.session_lines.append(site.line)
    return len(draft.sessions) - 1


def _read_dialogue(line: JsonLine, site: Site, drafts: dict[str, _Draft]) -> Optional[tuple[str, int]]:
    """Add one dialogue line to its persona; return (persona_id, session position)."""
    value = line.value
    if not isinstance(value, dict):
        site.problem("", f"expected a dialogue object with persona_id, session_id and messages, "
                     f"got {kind(value)}")
        return None
    pid = value.get("persona_id")
    if not isinstance(pid, str) or not pid.strip():
        got = "nothing" if "persona_id" not in value else kind(pid)
        site.problem("persona_id", f"expected a non-empty string, got {got}")
        return None
    if name_problem(pid):
        site.problem("persona_id", name_problem(pid))
        return None
    draft = drafts.setdefault(pid, _Draft(pid))
    _take_profile(draft, value, site)
    return pid, _take_session(draft, value, site)


_PERSONA_ID = re.compile(rb'"persona_id"\s*:\s*("(?:[^"\\]|\\.)*")')
_ROUTINES_KEY = re.compile(rb'"routines"\s*:')


def _routines_unread(path: Path, lines: list[JsonLine]) -> set[str]:
    """Personas whose routines may sit on a line that did not parse: its raw text names the
    persona and has a "routines" key. Their routine count is unknown."""
    broken = [line.number for line in lines if not line.ok]
    if not broken:
        return set()
    raw = path.read_bytes().split(b"\n")
    found = set()
    for number in broken:
        pid, key = _PERSONA_ID.search(raw[number - 1]), _ROUTINES_KEY.search(raw[number - 1])
        if pid and key:
            try:
                found.add(json.loads(pid.group(1)))
            except ValueError:  # an id that is itself broken names nobody
                pass
    return found


def _check_applied_routines(draft: _Draft, file: str, problems: list[Problem],
                            unread: set[str]) -> None:
    """Range-check `applied_routines` once the persona's routines are known.

    Skipped when they are not: its routines are not a list, or it has none read and a broken
    line of it carries some (`unread`). Else one broken line would make every session of
    its persona "out of range"; that line's own problem is the one to fix."""
    if not draft.routines_ok or (draft.routines_json is None and draft.persona_id in unread):
        return
    n = len(draft.routines)
    for session, number in zip(draft.sessions, draft.session_lines):
        for i, v in enumerate((session.applied_routines if session else None) or []):
            if is_index(v) and v >= n:
                problems.append(Problem(file, number, f"applied_routines[{i}]", f"routine index {v} "
                                        f"out of range: {draft.persona_id} has {n} routine(s)"))


def read_dialogues(path: str | Path, problems: list[Problem]) -> tuple[Dataset, list]:
    """The dataset of a dialogue file and, per line, its (persona_id, position) or None.
    Problems are appended to `problems` in line order."""
    file, found = str(path), []
    lines = read_json_lines(path, found) or []
    drafts: dict[str, _Draft] = {}
    owners: list[Optional[tuple[str, int]]] = []
    for line in lines:
        site = Site(file, line.number, found)
        owners.append(_read_dialogue(line, site, drafts) if line.ok else None)
    unread = _routines_unread(Path(path), lines)
    for draft in drafts.values():
        _check_applied_routines(draft, file, found, unread)
    problems += sorted(found, key=lambda p: p.line or 0)  # stable: a line's problems keep their order
    personas = [Persona(persona_id=d.persona_id, character=d.character, routines=d.routines,
                        sessions=d.sessions) for d in drafts.values()]
    return Dataset(personas), owners


def _line_to_position(pid: str, part: str, i: int, k: int, owners: list, site: Site,
                      dialogues: str) -> Optional[int]:
    """The session position of line index `k`, or None (problem recorded)."""
    where = f"{pid}.{part}[{i}]"
    if k >= len(owners):
        site.problem(where, f"line index {k} out of range: {dialogues} has {len(owners)} line(s)")
        return None
    owner = owners[k]
    if owner is None:
        return None  # that line is broken; its own problem names it
    if owner[0] != pid:
        site.problem(where, f"line index {k} ({dialogues} line {k + 1}) is a dialogue of "
                     f"{owner[0]}, not {pid}")
        return None
    return owner[1]


def _map_line_splits(raw: Splits, owners: list, site_for, dialogues: str) -> Splits:
    """Turn splits of line indices into splits of session positions, per persona.

    `site_for(pid)` gives the Site where problems of that persona's entry belong.
    """
    known = {o[0] for o in owners if o is not None}
    out: Splits = {}
    for pid, split in raw.items():
        site = site_for(pid)
        if pid not in known:
            site.problem(pid, f"unknown persona; no dialogue in {dialogues} has this persona_id")
            continue
        parts = {}
        for part in SPLIT_PARTS:
            positions = [_line_to_position(pid, part, i, k, owners, site, dialogues)
                         for i, k in enumerate(getattr(split, part)) if is_index(k)]
            parts[part] = [p for p in positions if p is not None]
        out[pid] = Split(**parts, cold_start=split.cold_start)
    return out


def import_dialogues(dialogues_file: str | Path, splits_file: str | Path) -> tuple[Dataset, Splits]:
    """Read the cleaned-dialogues layout and its splits of line indices.

    Returns the dataset (personas in order of first appearance, sessions in file order) and
    splits of positions in `Persona.sessions`. Raises `DataError` with every problem of both
    files (file, line, field path, expected vs found).
    """
    problems: list[Problem] = []
    dataset, owners = read_dialogues(dialogues_file, problems)
    value, text = read_json_file(splits_file, problems)
    splits: Splits = {}
    if value is not None:
        raw, found = parse_splits(value, str(splits_file), text)
        problems += found
        key_lines = split_key_lines(text)

        def site_for(pid: str) -> Site:
            return Site(str(splits_file), key_lines.get(pid), problems)

        if owners:  # an unreadable dialogue file is reported once, not once per persona
            splits = _map_line_splits(raw, owners, site_for, str(dialogues_file))
    if problems:
        raise DataError(problems, header=f"cannot import {dialogues_file} with {splits_file}")
    return dataset, splits


def write_import(dialogues_file: str | Path, splits_file: str | Path,
                 out_dir: str | Path) -> tuple[Dataset, Splits]:
    """Import (see `import_dialogues`) and write the canonical layout plus `splits.json`
    into `out_dir`. Returns what was written."""
    dataset, splits = import_dialogues(dialogues_file, splits_file)
    write_dataset(dataset, out_dir)
    write_splits(splits, Path(out_dir) / "splits.json")
    return dataset, splits
