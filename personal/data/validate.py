"""Read the canonical layout and check every record, naming each problem precisely.

Every check collects a `Problem` (file, 1-based line, field path, what was expected and what
was found) instead of stopping, so one pass reports everything. Bytes are decoded line by
line, so a bad byte names its line and never hides the rest of the file.

Lenient mode keeps the good records and says exactly which were dropped. The unit dropped:
- a **session**, when only that session is bad; its persona keeps the other sessions
  (note: the positions of the persona's later sessions shift by one);
- a **persona** (line *i* of all three files, so the files stay aligned) when any of its
  three lines does not decode or parse, is missing, has the wrong top-level type, or has a bad
  character line or a bad routine. A bad routine drops the persona because sessions point
  into the routines by index; dropping one routine would silently re-point them.

Accepted on read (the writer in `personal.data.io` relies on these): a session without `meta`
(or with `"meta": null`) has an unknown context (`meta=None`); a characters line may be `null`
(unknown sketch) or an object with `character` and optional `name`, `archetype`, `persona_id`;
`null` devices in actions mean untouched and are dropped in memory; unknown keys of sessions
and messages are ignored (extensions of other tools), unknown devices, parameters and context
fields are problems.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from personal.data.schema import (DEVICES, META_FIELDS, ROLES, Actions, Dataset, Message, Meta,
                                  Persona, Routine, Session, Split, Splits, persona_id_for_line)
from personal.data.safety import name_problem
from personal.errors import DataError, Problem

log = logging.getLogger(__name__)

CHARACTERS, ROUTINES, SESSIONS = FILES = ("characters.jsonl", "routines.jsonl", "sessions.jsonl")
SPLIT_PARTS = ("train", "val", "test")


# --- Describing values in messages -------------------------------------------------------

def show(value: Any, limit: int = 60) -> str:
    """A value as JSON text (what the user wrote), shortened for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind(value: Any) -> str:
    """The JSON type of a value, with an article, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean {show(value)}"
    if isinstance(value, (int, float)):
        return f"a number {show(value)}"
    if isinstance(value, str):
        return f"a string {show(value)}" if value.strip() else f"an empty string {show(value)}"
    if isinstance(value, list):
        return f"a list {show(value)}"
    return f"an object {show(value)}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class Site:
    """Where problems found now belong: one line of one file, collecting into `problems`."""

    file: str
    line: Optional[int]
    problems: list[Problem]

    def problem(self, field_path: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.line, field_path, message))


# --- Reading bytes into JSON values ------------------------------------------------------

@dataclass
class JsonLine:
    """One line of a JSONL file: its 1-based number and value; `ok` is False when the line
    did not decode or parse (the problem is already recorded)."""

    number: int
    value: Any = None
    ok: bool = False


class DuplicateKey(ValueError):
    """A JSON object names one key twice (json.loads would silently keep the last)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


def loads(text: str | bytes) -> Any:
    """json.loads that refuses an object with a repeated key (DuplicateKey)."""
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)


def json_error(e: json.JSONDecodeError) -> str:
    """`malformed JSON: <what> at column N` (json's own messages may end in "at")."""
    what = e.msg.removesuffix(" at")
    return f"malformed JSON: {what} at column {e.colno}"


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _read_bytes(path: Path, file: str, problems: list[Problem]) -> Optional[bytes]:
    if path.is_symlink() and not path.exists():
        problems.append(Problem(file, None, "", "a symbolic link that leads nowhere (dangling, "
                                "or a loop of links)"))
        return None
    if not path.exists():
        problems.append(Problem(file, None, "", "missing file"))
        return None
    if path.is_dir():
        problems.append(Problem(file, None, "", "expected a file, found a folder"))
        return None
    try:
        data = path.read_bytes()
    except OSError as e:
        problems.append(Problem(file, None, "", f"cannot read: {e.strerror or e}"))
        return None
    if data.startswith(UTF16_BOMS):
        problems.append(Problem(file, None, "", "UTF-16 text (it starts with a UTF-16 byte-order "
                                "mark); save it as UTF-8"))
        return None
    return data


def _parse_line(raw: bytes, site: Site) -> JsonLine:
    line = JsonLine(site.line or 0)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        site.problem("", f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}")
        return line
    if site.line == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    if not text.strip():
        site.problem("", "blank line; expected one JSON value per line")
        return line
    try:
        line.value = loads(text)
    except json.JSONDecodeError as e:
        site.problem("", json_error(e))
        return line
    except DuplicateKey as e:
        site.problem("", f"key {str(e)!r} appears twice in one object (which one is meant?)")
        return line
    except RecursionError:
        site.problem("", "malformed JSON: nested too deeply")
        return line
    line.ok = True
    return line


def read_json_lines(path: str | Path, problems: list[Problem]) -> Optional[list[JsonLine]]:
    """Every line of a JSONL file as a `JsonLine`, problems appended to `problems`.

    None when the file is missing or unreadable; [] when it is empty. The final newline
    does not start a line; `\\r\\n` line ends are accepted.
    """
    path = Path(path)
    data = _read_bytes(path, str(path), problems)
    if data is None:
        return None
    if not data.strip():
        problems.append(Problem(str(path), None, "", "empty file; expected one JSON value per line"))
        return []
    chunks = data.split(b"\n")
    if chunks[-1] == b"":
        chunks.pop()
    return [_parse_line(c.removesuffix(b"\r"), Site(str(path), i + 1, problems))
            for i, c in enumerate(chunks)]


def read_json_file(path: str | Path, problems: list[Problem]) -> tuple[Any, str]:
    """A whole-file JSON document (e.g. a splits file) and its text; (None, "") on a problem."""
    path = Path(path)
    data = _read_bytes(path, str(path), problems)
    if data is None:
        return None, ""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problems.append(Problem(str(path), line, "", f"not valid UTF-8: byte 0x{data[e.start]:02x}"))
        return None, ""
    if not text.strip():
        problems.append(Problem(str(path), None, "", "empty file; expected a JSON object"))
        return None, ""
    try:
        return loads(text), text
    except json.JSONDecodeError as e:
        problems.append(Problem(str(path), e.lineno, "", json_error(e)))
    except DuplicateKey as e:
        line = split_key_lines(text, repeats=True).get(str(e))
        problems.append(Problem(str(path), line, str(e), "appears twice in one object"))
    except RecursionError:
        problems.append(Problem(str(path), None, "", "malformed JSON: nested too deeply"))
    return None, ""


# --- Checking records --------------------------------------------------------------------

def parse_params(device: str, value: Any, site: Site, path: str) -> dict[str, Any]:
    """The parameters of one device; unknown parameters and values outside the schema are
    problems."""
    specs = DEVICES[device]
    out: dict[str, Any] = {}
    for name, v in value.items():
        spec = specs.get(name)
        if spec is None:
            site.problem(_join(path, name), f"unknown parameter {name!r} of {device}; expected "
                         f"one of {', '.join(specs)}")
        elif not spec.accepts(v):
            site.problem(_join(path, name), f"expected {spec.describe()}, got {show(v)}")
        else:
            out[name] = v
    return out


def parse_actions(value: Any, site: Site, path: str) -> Actions:
    """`{device: {parameter: value} | null}`; `null` devices are untouched and dropped."""
    if not isinstance(value, dict):
        site.problem(path, f"expected an object of devices, got {kind(value)}")
        return {}
    out: Actions = {}
    for device, params in value.items():
        where = _join(path, device)
        if device not in DEVICES:
            site.problem(where, f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
        elif params is None:
            continue  # untouched, as files may say explicitly
        elif not isinstance(params, dict):
            site.problem(where, f"expected null or an object of parameters, got {kind(params)}")
        else:
            out[device] = parse_params(device, params, site, where)
    return out


def _parse_context(value: dict, site: Site, path: str) -> dict[str, str]:
    out = {}
    for name, v in value.items():
        allowed = META_FIELDS.get(name)
        if allowed is None:
            site.problem(_join(path, name), f"unknown context field {name!r}; expected one of "
                         f"{', '.join(META_FIELDS)}")
        elif v not in allowed:
            choices = ", ".join(repr(c) for c in allowed)
            site.problem(_join(path, name), f"expected one of {choices}, got {show(v)}")
        else:
            out[name] = v
    return out


def parse_triggers(value: Any, site: Site, path: str) -> dict[str, str]:
    """A routine's triggers: any subset of the five context fields, each with a known value."""
    if not isinstance(value, dict):
        site.problem(path, f"expected an object of context fields, got {kind(value)}")
        return {}
    return _parse_context(value, site, path)


def parse_meta(value: Any, site: Site, path: str) -> Meta:
    """A session's context: all five fields required; `None` (unknown context) stays None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        site.problem(path, f"expected an object with {', '.join(META_FIELDS)}, got {kind(value)}")
        return None
    for name in META_FIELDS:
        if name not in value:
            site.problem(_join(path, name), f"missing context field; a session's meta needs "
                         f"all of {', '.join(META_FIELDS)}")
    out = _parse_context(value, site, path)
    return {name: out[name] for name in META_FIELDS if name in out}  # canonical field order


def _parse_text(m: dict, key: str, site: Site, path: str, required: bool) -> Optional[str]:
    if key not in m or (m[key] is None and not required):
        if required:
            site.problem(_join(path, key), "missing; expected a non-empty string")
        return None
    value = m[key]
    if not isinstance(value, str) or not value.strip():
        site.problem(_join(path, key), f"expected a non-empty string, got {kind(value)}")
        return None
    bad = text_problem(value)
    if bad:
        site.problem(_join(path, key), bad)
        return None
    return value


def text_problem(text: str) -> str:
    """Why a message text cannot be used ('' when it can): control characters other than
    tab and line breaks (e.g. NUL), or a lone surrogate, which no tokenizer can encode."""
    for c in text:
        code = ord(c)
        if (code < 32 and c not in "\t\n\r") or code == 127:
            return f"contains the control character U+{code:04X}"
        if 0xD800 <= code <= 0xDFFF:
            return f"contains a lone surrogate U+{code:04X} (not encodable as UTF-8)"
    return ""


def parse_message(value: Any, site: Site, path: str) -> Optional[Message]:
    """One turn; `actions` and `alt_text` are extensions allowed on assistant turns only."""
    if not isinstance(value, dict):
        site.problem(path, f"expected a message object with role and text, got {kind(value)}")
        return None
    role = value.get("role")
    if "role" not in value:
        site.problem(_join(path, "role"), 'missing; expected "user" or "assistant"')
    elif role not in ROLES:
        site.problem(_join(path, "role"), f'unknown role {show(role)}; expected "user" or "assistant"')
    text = _parse_text(value, "text", site, path, required=True)
    actions = None
    if value.get("actions") is not None:
        if role == "user":
            site.problem(_join(path, "actions"), "actions on a user turn; only assistant turns "
                         "carry actions")
        else:
            actions = parse_actions(value["actions"], site, _join(path, "actions"))
    alt_text = _parse_text(value, "alt_text", site, path, required=False)
    if alt_text is not None and role == "user":
        site.problem(_join(path, "alt_text"), "alt_text on a user turn; only assistant turns "
                     "carry alt_text")
    provenance = _parse_provenance(value.get("provenance"), site, _join(path, "provenance"))
    return Message(role=role, text=text, actions=actions, alt_text=alt_text,
                   provenance=provenance)


#: Fields of a turn's `provenance` (written by data augmentation) and their types.
PROVENANCE_FIELDS = {"method": str, "source_session": int, "source_turn": int,
                     "context_from": int}


def _parse_provenance(value: Any, site: Site, path: str) -> Optional[dict]:
    """Where an augmented turn came from: {method, source_session, source_turn[,
    context_from]}."""
    if value is None:
        return None
    if not isinstance(value, dict):
        site.problem(path, f"expected an object {{method, source_session, source_turn}}, got "
                     f"{kind(value)}")
        return None
    for name in ("method", "source_session", "source_turn"):
        if name not in value:
            site.problem(_join(path, name), "missing")
    for name, v in value.items():
        want = PROVENANCE_FIELDS.get(name)
        if want is None:
            site.problem(_join(path, name), f"unknown field (known: "
                         f"{', '.join(PROVENANCE_FIELDS)})")
        elif not isinstance(v, want) or isinstance(v, bool):
            site.problem(_join(path, name), f"expected {want.__name__}, got {kind(v)}")
    return dict(value)


def parse_messages(value: Any, site: Site, path: str) -> list[Message]:
    """A non-empty list of messages that starts with a user turn."""
    if not isinstance(value, list) or not value:
        site.problem(path, f"expected a non-empty list of messages, got {kind(value)}")
        return []
    messages = [parse_message(v, site, f"{path}[{i}]") for i, v in enumerate(value)]
    first = messages[0]
    if first is not None and first.role == "assistant":
        site.problem(f"{path}[0].role", 'a session must start with a user turn, got "assistant"')
    for i in range(1, len(messages)):
        a, b = messages[i - 1], messages[i]
        if a is not None and b is not None and a.role == b.role and a.role in ROLES:
            site.problem(f"{path}[{i}].role", f"two {b.role} turns in a row; a session "
                         "alternates user and assistant turns")
    last = messages[-1]
    if last is not None and last.role == "user" and len(messages) > 1:
        site.problem(f"{path}[{len(messages) - 1}].role", "a session ends with an assistant "
                     "turn; the last user turn has no reply")
    return [m for m in messages if m is not None]


def _parse_applied(value: Any, site: Site, path: str, n_routines: Optional[int]) -> Optional[list[int]]:
    if value is None:
        return None
    if not isinstance(value, list):
        site.problem(path, f"expected a list of routine indices, got {kind(value)}")
        return None
    for i, v in enumerate(value):
        if not is_index(v):
            site.problem(f"{path}[{i}]", f"expected a routine index (integer >= 0), got {show(v)}")
        elif n_routines is not None and v >= n_routines:
            site.problem(f"{path}[{i}]", f"routine index {v} out of range: the persona has "
                         f"{n_routines} routine(s)")
    return list(value)


def parse_session(value: Any, site: Site, path: str, n_routines: Optional[int]) -> Optional[Session]:
    """One dialogue. `n_routines` bounds `applied_routines`; None skips that check."""
    if not isinstance(value, dict):
        site.problem(path, f"expected a session object, got {kind(value)}")
        return None
    sid = value.get("session_id")
    if "session_id" not in value:
        site.problem(_join(path, "session_id"), "missing; expected an integer >= 0")
    elif not is_index(sid):
        site.problem(_join(path, "session_id"), f"expected an integer >= 0, got {show(sid)}")
    meta = parse_meta(value.get("meta"), site, _join(path, "meta"))
    messages = parse_messages(value.get("messages"), site, _join(path, "messages"))
    applied = _parse_applied(value.get("applied_routines"), site, _join(path, "applied_routines"),
                             n_routines)
    summary = _parse_text(value, "session_summarization", site, path, required=False)
    return Session(session_id=sid, meta=meta, messages=messages, applied_routines=applied,
                   session_summarization=summary)


def parse_routine(value: Any, site: Site, path: str) -> Routine:
    """`{"triggers": {...}, "actions": {...}}`."""
    if not isinstance(value, dict):
        site.problem(path, f'expected {{"triggers": ..., "actions": ...}}, got {kind(value)}')
        return Routine({}, {})
    for key in ("triggers", "actions"):
        if key not in value:
            site.problem(_join(path, key), "missing")
    triggers = parse_triggers(value.get("triggers", {}), site, _join(path, "triggers"))
    actions = parse_actions(value.get("actions", {}), site, _join(path, "actions"))
    return Routine(triggers=triggers, actions=actions)


def parse_routines(value: Any, site: Site, path: str = "routines") -> Optional[list[Routine]]:
    """A persona's list of routines; None when it is not a list (count unknown)."""
    if not isinstance(value, list):
        site.problem(path, f"expected a list of routines, got {kind(value)}")
        return None
    return [parse_routine(v, site, f"{path}[{i}]") for i, v in enumerate(value)]


def parse_character(value: Any, site: Site) -> dict[str, Optional[str]]:
    """A characters line: a string, null, or an object with `character` (plus optional
    `name`, `archetype`, `persona_id`). Returns those four as Persona keyword values."""
    out: dict[str, Optional[str]] = {"character": None, "name": None, "archetype": None,
                                     "persona_id": None}
    if value is None or isinstance(value, str):
        out["character"] = value
        return out
    if not isinstance(value, dict):
        site.problem("", f'expected the character sketch as a string or an object with '
                     f'"character", got {kind(value)}')
        return out
    if "character" not in value:
        site.problem("character", "missing; the object form of a characters line needs "
                     '"character" (a string or null)')
    for key in out:
        v = value.get(key)
        if v is not None and not isinstance(v, str):
            site.problem(key, f"expected a string or null, got {kind(v)}")
        elif key == "persona_id" and v is not None and name_problem(v):
            site.problem(key, name_problem(v))
        else:
            out[key] = v
    return out


def session_list(value: Any, site: Site) -> Optional[list]:
    """The sessions of a sessions line: a list, or `{"sessions": [...]}`."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and isinstance(value.get("sessions"), list):
        return value["sessions"]
    site.problem("", f'expected a list of sessions or {{"sessions": [...]}}, got {kind(value)}')
    return None


# --- The whole dataset ---------------------------------------------------------------------

@dataclass
class ValidationResult:
    """What validating a dataset folder found.

    `dataset` holds only the good records, `problems` every problem found, and `dropped` one
    entry per record that lenient mode drops: `"persona_003 (line 4)"` for a whole persona,
    `"persona_003 sessions[7] (sessions.jsonl line 4)"` for one session.
    """

    dataset: Dataset
    problems: list[Problem] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    personas_seen: int = 0
    """Persona lines: the line count of the longest of the three files."""
    sessions_seen: int = 0
    """Sessions on the sessions lines that parsed."""
    personas_dropped: int = 0
    sessions_dropped: int = 0
    """Sessions dropped one by one (those of dropped personas are not counted here)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: problems, what was kept and what was dropped."""
        kept = sum(len(p.sessions) for p in self.dataset.personas)
        return (f"{len(self.problems)} problem(s); kept {len(self.dataset.personas)} of "
                f"{self.personas_seen} personas and {kept} of {self.sessions_seen} sessions; "
                f"dropped {self.personas_dropped} persona(s) and {self.sessions_dropped} "
                f"single session(s)")


def _read_layout(path: Path, problems: list[Problem]) -> Optional[dict[str, Optional[list[JsonLine]]]]:
    expected = f"expected a folder with {', '.join(FILES)}"
    if not path.exists():
        problems.append(Problem(str(path), None, "", f"no such folder; {expected}"))
        return None
    if not path.is_dir():
        problems.append(Problem(str(path), None, "", f"{expected}, found a file"))
        return None
    if not any((path / name).exists() for name in FILES):
        problems.append(Problem(str(path), None, "", f"not a dataset folder: none of {', '.join(FILES)} "
                                "is there"))
        return None
    return {name: read_json_lines(path / name, problems) for name in FILES}


def _check_alignment(rows: dict[str, Optional[list[JsonLine]]], path: Path,
                     problems: list[Problem]) -> int:
    """The number of persona lines (the longest file); shorter files are problems, except
    missing or empty ones, which are reported already."""
    counts = {name: len(lines) for name, lines in rows.items() if lines}
    if not counts:
        return 0
    longest = max(counts, key=counts.get)
    n = counts[longest]
    for name, k in counts.items():
        if k < n:
            problems.append(Problem(str(path / name), None, "", f"has {k} line(s) but {longest} has "
                                    f"{n}; line i of the three files must be the same persona"))
    return n


def _check_sessions(values: list, site: Site, n_routines: Optional[int]) -> tuple[list[Session], list[int]]:
    """The good sessions of one sessions line, and the positions of the bad ones."""
    kept, bad, first_use = [], [], {}
    for k, value in enumerate(values):
        before = len(site.problems)
        session = parse_session(value, site, f"sessions[{k}]", n_routines)
        sid = session.session_id if session is not None else None
        if is_index(sid) and sid in first_use:
            site.problem(f"sessions[{k}].session_id", f"duplicate session id {sid}, already used "
                         f"by sessions[{first_use[sid]}]")
        elif is_index(sid):
            first_use[sid] = k
        if len(site.problems) > before:
            bad.append(k)
        else:
            kept.append(session)
    return kept, bad


def _line_at(lines: Optional[list[JsonLine]], index: int) -> Optional[JsonLine]:
    return lines[index] if lines is not None and index < len(lines) else None


def _check_persona(index: int, rows: dict, path: Path, result: ValidationResult,
                   first_line: dict[str, int]) -> None:
    """Check line `index` of the three files; keep the persona, its good sessions, or
    nothing, and record what was dropped."""
    number, problems = index + 1, result.problems
    before = len(problems)
    sites = {name: Site(str(path / name), number, problems) for name in FILES}
    lines = {name: _line_at(rows[name], index) for name in FILES}
    good = {name: line is not None and line.ok for name, line in lines.items()}
    ident = parse_character(lines[CHARACTERS].value, sites[CHARACTERS]) if good[CHARACTERS] else {}
    routines = parse_routines(lines[ROUTINES].value, sites[ROUTINES]) if good[ROUTINES] else None
    values = session_list(lines[SESSIONS].value, sites[SESSIONS]) if good[SESSIONS] else None
    if values == []:
        sites[SESSIONS].problem("", "no sessions; a persona needs at least one")
    pid = ident.get("persona_id") or persona_id_for_line(index)
    if pid in first_line:
        sites[CHARACTERS].problem("persona_id", f"duplicate persona id {pid!r}, already used on "
                                  f"line {first_line[pid]}")
    first_line.setdefault(pid, number)
    # Decided before the sessions are checked: a bad session alone does not drop the persona.
    persona_bad = not all(good.values()) or values is None or len(problems) > before
    n_routines = None if routines is None else len(routines)
    sessions, bad = _check_sessions(values or [], sites[SESSIONS], n_routines)
    result.sessions_seen += len(values or [])
    if persona_bad:
        result.dropped.append(f"{pid} (line {number})")
        result.personas_dropped += 1
        return
    result.dropped += [f"{pid} sessions[{k}] ({SESSIONS} line {number})" for k in bad]
    result.sessions_dropped += len(bad)
    result.dataset.personas.append(Persona(
        persona_id=pid, character=ident["character"], routines=routines, sessions=sessions,
        archetype=ident["archetype"], name=ident["name"]))


def validate_dataset(path: str | Path) -> ValidationResult:
    """Check a folder in the canonical layout; report every problem and keep the good records.

    Never raises for bad input: a missing folder or file is a problem like any other.
    """
    path = Path(path)
    result = ValidationResult(Dataset([]))
    rows = _read_layout(path, result.problems)
    if rows is None:
        return result
    result.personas_seen = _check_alignment(rows, path, result.problems)
    first_line: dict[str, int] = {}
    for index in range(result.personas_seen):
        _check_persona(index, rows, path, result, first_line)
    # Read errors are found before the records are checked; report file by file, line by line.
    order = {str(path / name): i for i, name in enumerate(FILES)}
    result.problems.sort(key=lambda p: (order.get(p.file, -1), p.line or 0))
    return result


def load_dataset(path: str | Path, lenient: bool = False) -> Dataset:
    """Read a folder in the canonical layout.

    Strict (default): raise `DataError` carrying every problem if there is any. Lenient:
    return the good records and log what was dropped (`validate_dataset` gives the details);
    still raise when nothing valid is left.
    """
    result = validate_dataset(path)
    if result.ok:
        return result.dataset
    if not lenient:
        raise DataError(result.problems, header=f"{path}: invalid dataset")
    if not result.dataset.personas:
        raise DataError(result.problems, header=f"{path}: no valid persona to keep")
    log.warning("%s: %s. Dropped: %s", path, result.summary(), "; ".join(result.dropped))
    return result.dataset


# --- Splits ------------------------------------------------------------------------------

_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def split_key_lines(text: str, repeats: bool = False) -> dict[str, int]:
    """The 1-based line where each key of a JSON text first appears (with `repeats`: where
    it appears again), to locate a persona's entry in a splits file (json.loads keeps no
    positions)."""
    lines: dict[str, int] = {}
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        for m in _JSON_KEY.finditer(line):
            key = m.group(1)
            if repeats and key in seen:
                lines.setdefault(key, number)
            seen.add(key)
            if not repeats:
                lines.setdefault(key, number)
    return lines


def _parse_indices(value: Any, site: Site, path: str) -> list:
    if value is None:
        site.problem(path, "missing; expected a list of indices")
        return []
    if not isinstance(value, list):
        site.problem(path, f"expected a list of indices, got {kind(value)}")
        return []
    first_at: dict[int, int] = {}
    for i, v in enumerate(value):
        if not is_index(v):
            site.problem(f"{path}[{i}]", f"expected an integer index >= 0, got {show(v)}")
        elif v in first_at:
            site.problem(f"{path}[{i}]", f"index {v} appears twice (also at [{first_at[v]}])")
        else:
            first_at[v] = i
    return list(value)


def _check_disjoint(parts: dict[str, list], site: Site, pid: str) -> None:
    for a_pos, a in enumerate(SPLIT_PARTS):
        earlier = {v for v in parts[a] if is_index(v)}
        for b in SPLIT_PARTS[a_pos + 1:]:
            for i, v in enumerate(parts[b]):
                if is_index(v) and v in earlier:
                    site.problem(f"{pid}.{b}[{i}]", f"index {v} is also in {a}; train, val and "
                                 "test must be disjoint")


def parse_split(entry: Any, site: Site, pid: str) -> Optional[Split]:
    """One persona's entry `{train, val, test[, cold_start]}`; None if it is not an object."""
    if not isinstance(entry, dict):
        site.problem(pid, f"expected an object with train, val and test lists, got {kind(entry)}")
        return None
    for key in entry:
        if key not in (*SPLIT_PARTS, "cold_start"):
            site.problem(_join(pid, key), "unknown key; expected train, val, test or cold_start")
    parts = {part: _parse_indices(entry.get(part), site, _join(pid, part)) for part in SPLIT_PARTS}
    _check_disjoint(parts, site, pid)
    cold = entry.get("cold_start", False)
    if not isinstance(cold, bool):
        site.problem(_join(pid, "cold_start"), f"expected true or false, got {show(cold)}")
        cold = False
    if cold and parts["train"]:
        site.problem(_join(pid, "train"), f"a cold-start persona appears in no training split, "
                     f"got {len(parts['train'])} training index(es)")
    return Split(train=parts["train"], val=parts["val"], test=parts["test"], cold_start=cold)


def parse_splits(value: Any, file: str, text: str = "") -> tuple[Splits, list[Problem]]:
    """Splits from a parsed splits file, with every structural problem (types, unknown keys,
    repeated or overlapping indices, cold-start personas with training data).

    When problems are returned the splits may still hold the offending values, so later
    checks can name exact positions; never use such splits for anything else.
    """
    problems: list[Problem] = []
    if not isinstance(value, dict):
        problems.append(Problem(file, None, "", "expected an object {persona_id: {train, val, "
                                f"test}}}}, got {kind(value)}"))
        return {}, problems
    lines = split_key_lines(text)
    splits: Splits = {}
    for pid, entry in value.items():
        split = parse_split(entry, Site(file, lines.get(pid), problems), pid)
        if split is not None:
            splits[pid] = split
    return splits, problems


def validate_splits(splits: Splits, dataset: Dataset, file: str = "splits",
                    lines: Optional[dict[str, int]] = None) -> list[Problem]:
    """Problems of `splits` against `dataset`: personas it lacks and session indices out of
    range. Indices are positions in `Persona.sessions`."""
    problems: list[Problem] = []
    by_id, lines = dataset.by_id(), lines or {}
    for pid, split in splits.items():
        site = Site(file, lines.get(pid), problems)
        persona = by_id.get(pid)
        if persona is None:
            site.problem(pid, f"unknown persona; not among the dataset's {len(by_id)} personas")
            continue
        n = len(persona.sessions)
        for part in SPLIT_PARTS:
            for i, v in enumerate(getattr(split, part)):
                if is_index(v) and v >= n:
                    has = f"{n} session(s) (0..{n - 1})" if n else "no sessions"
                    site.problem(f"{pid}.{part}[{i}]", f"session index {v} out of range: {pid} "
                                 f"has {has}")
    return problems
