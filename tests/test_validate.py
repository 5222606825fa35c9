"""Validation of the canonical layout: every bad input names file, line, field and value;
all problems come in one pass; lenient mode drops exactly the bad records."""
import copy
import json
from pathlib import Path

import pytest

from personal.data.validate import load_dataset, validate_dataset
from personal.errors import DataError, PersonalError

META = {"time_of_day": "evening", "day_of_week": "weekday", "sun_phase": "after_sunset",
        "weather": "rainy", "outdoor_temp": "cold"}
ROUTINE = {"triggers": {"time_of_day": "evening"},
           "actions": {"lights": {"brightness": 40, "color": "warm"}, "tv": None}}


def session(sid: int) -> dict:
    return {"session_id": sid, "meta": dict(META),
            "messages": [{"role": "user", "text": "Dim the lights, please."},
                         {"role": "assistant", "text": "Lights at 40, warm.",
                          "actions": {"lights": {"brightness": 40, "color": "warm"}},
                          "alt_text": "Warm lights at 40 for you."}],
            "applied_routines": [0]}


def dump(value) -> str:
    return json.dumps(value)


def write_layout(folder: Path, n: int = 2, characters=None, routines=None, sessions=None) -> Path:
    """`n` good personas with two sessions each; `characters` / `routines` / `sessions` map a
    0-based line index to replacement line text (or replace the whole file with a list)."""
    defaults = {
        "characters.jsonl": [dump(f"Persona {i} likes dim light.") for i in range(n)],
        "routines.jsonl": [dump([ROUTINE]) for _ in range(n)],
        "sessions.jsonl": [dump([session(0), session(1)]) for _ in range(n)],
    }
    for name, change in (("characters.jsonl", characters), ("routines.jsonl", routines),
                         ("sessions.jsonl", sessions)):
        lines = defaults[name]
        if isinstance(change, list):
            lines = change
        elif change:
            for i, text in change.items():
                lines[i] = text
        (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


def only(problems):
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_good_layout_reads_every_record(tmp_path):
    result = validate_dataset(write_layout(tmp_path, n=3))
    assert result.ok and result.dropped == []
    assert [p.persona_id for p in result.dataset.personas] == ["persona_000", "persona_001", "persona_002"]
    assert (result.personas_seen, result.sessions_seen) == (3, 6)
    persona = result.dataset.personas[1]
    assert persona.character == "Persona 1 likes dim light."
    assert persona.routines[0].actions == {"lights": {"brightness": 40, "color": "warm"}}  # null tv dropped
    assert persona.sessions[1].meta == META
    assert persona.sessions[0].messages[1].actions == {"lights": {"brightness": 40, "color": "warm"}}
    assert persona.sessions[0].messages[1].alt_text == "Warm lights at 40 for you."


def _set(path, value):
    """Mutator: set a nested key of session 0 (path as a tuple of keys/indices)."""
    def apply(s):
        target = s
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return apply


def _delete(path):
    def apply(s):
        target = s
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return apply


SESSION_CASES = [
    ("unknown role", _set(("messages", 1, "role"), "bot"),
     "sessions[0].messages[1].role", 'unknown role "bot"; expected "user" or "assistant"'),
    ("missing role", _delete(("messages", 1, "role")),
     "sessions[0].messages[1].role", 'missing; expected "user" or "assistant"'),
    ("empty text", _set(("messages", 0, "text"), ""),
     "sessions[0].messages[0].text", 'expected a non-empty string, got an empty string ""'),
    ("blank text", _set(("messages", 0, "text"), "   "),
     "sessions[0].messages[0].text", 'expected a non-empty string, got an empty string "   "'),
    ("non-string text", _set(("messages", 1, "text"), 5),
     "sessions[0].messages[1].text", "expected a non-empty string, got a number 5"),
    ("missing text", _delete(("messages", 0, "text")),
     "sessions[0].messages[0].text", "missing; expected a non-empty string"),
    ("starts with assistant", lambda s: s["messages"].pop(0),
     "sessions[0].messages[0].role", 'a session must start with a user turn, got "assistant"'),
    ("no messages", _set(("messages",), []),
     "sessions[0].messages", "expected a non-empty list of messages, got a list []"),
    ("message not an object", _set(("messages", 1), "hello"),
     "sessions[0].messages[1]", 'expected a message object with role and text, got a string "hello"'),
    ("missing meta field", _delete(("meta", "weather")),
     "sessions[0].meta.weather", "missing context field; a session's meta needs all of "
     "time_of_day, day_of_week, sun_phase, weather, outdoor_temp"),
    ("meta value outside schema", _set(("meta", "weather"), "foggy"),
     "sessions[0].meta.weather", "expected one of 'sunny', 'cloudy', 'rainy', 'snowy', got \"foggy\""),
    ("unknown meta field", _set(("meta", "season"), "spring"),
     "sessions[0].meta.season", "unknown context field 'season'; expected one of time_of_day, "
     "day_of_week, sun_phase, weather, outdoor_temp"),
    ("meta not an object", _set(("meta",), "evening"),
     "sessions[0].meta", 'expected an object with time_of_day, day_of_week, sun_phase, weather, '
     'outdoor_temp, got a string "evening"'),
    ("AC temperature 35", _set(("messages", 1, "actions"), {"ac": {"temperature": 35}}),
     "sessions[0].messages[1].actions.ac.temperature", "expected an integer in 16..30, got 35"),
    ("AC temperature not an integer", _set(("messages", 1, "actions"), {"ac": {"temperature": 22.5}}),
     "sessions[0].messages[1].actions.ac.temperature", "expected an integer in 16..30, got 22.5"),
    ("colour purple", _set(("messages", 1, "actions", "lights", "color"), "purple"),
     "sessions[0].messages[1].actions.lights.color",
     "expected one of 'warm', 'cool', 'neutral', got \"purple\""),
    ("armed not a boolean", _set(("messages", 1, "actions"), {"security": {"armed": "yes"}}),
     "sessions[0].messages[1].actions.security.armed", 'expected true or false, got "yes"'),
    ("unknown device", _set(("messages", 1, "actions"), {"fridge": {"temperature": 4}}),
     "sessions[0].messages[1].actions.fridge",
     "unknown device 'fridge'; expected one of tv, ac, lights, speaker, security"),
    ("unknown parameter", _set(("messages", 1, "actions"), {"ac": {"swing": True}}),
     "sessions[0].messages[1].actions.ac.swing",
     "unknown parameter 'swing' of ac; expected one of temperature, mode, fan_speed"),
    ("device not an object", _set(("messages", 1, "actions"), {"tv": 30}),
     "sessions[0].messages[1].actions.tv", "expected null or an object of parameters, got a number 30"),
    ("actions on a user turn", _set(("messages", 0, "actions"), {"tv": {"volume": 10}}),
     "sessions[0].messages[0].actions", "actions on a user turn; only assistant turns carry actions"),
    ("alt_text on a user turn", _set(("messages", 0, "alt_text"), "Dim them."),
     "sessions[0].messages[0].alt_text", "alt_text on a user turn; only assistant turns carry alt_text"),
    ("empty alt_text", _set(("messages", 1, "alt_text"), ""),
     "sessions[0].messages[1].alt_text", 'expected a non-empty string, got an empty string ""'),
    ("missing session_id", _delete(("session_id",)),
     "sessions[0].session_id", "missing; expected an integer >= 0"),
    ("negative session_id", _set(("session_id",), -1),
     "sessions[0].session_id", "expected an integer >= 0, got -1"),
    ("applied routine out of range", _set(("applied_routines",), [0, 3]),
     "sessions[0].applied_routines[1]", "routine index 3 out of range: the persona has 1 routine(s)"),
    ("summary not a string", _set(("session_summarization",), ["a"]),
     "sessions[0].session_summarization", 'expected a non-empty string, got a list ["a"]'),
]


@pytest.mark.parametrize("name,mutate,field,message", SESSION_CASES, ids=[c[0] for c in SESSION_CASES])
def test_bad_session_names_file_line_field_and_value(tmp_path, name, mutate, field, message):
    bad = session(0)
    mutate(bad)
    result = validate_dataset(write_layout(tmp_path, sessions={1: dump([bad, session(1)])}))
    problem = only(result.problems)
    assert (Path(problem.file).name, problem.line, problem.field) == ("sessions.jsonl", 2, field)
    assert problem.message == message
    assert str(problem).endswith(f"sessions.jsonl:2: {field}: {message}")
    # Lenient unit: only that session goes; the persona keeps its other session.
    assert result.dropped == ["persona_001 sessions[0] (sessions.jsonl line 2)"]
    assert result.sessions_dropped == 1 and result.personas_dropped == 0
    kept = result.dataset.by_id()["persona_001"]
    assert [s.session_id for s in kept.sessions] == [1]


ROUTINE_CASES = [
    ("trigger unknown field", {"triggers": {"season": "winter"}, "actions": {}},
     "routines[0].triggers.season", "unknown context field 'season'; expected one of time_of_day, "
     "day_of_week, sun_phase, weather, outdoor_temp"),
    ("trigger value", {"triggers": {"time_of_day": "noon"}, "actions": {}},
     "routines[0].triggers.time_of_day",
     "expected one of 'morning', 'afternoon', 'evening', 'night', got \"noon\""),
    ("routine AC temperature", {"triggers": {}, "actions": {"ac": {"temperature": 35}}},
     "routines[0].actions.ac.temperature", "expected an integer in 16..30, got 35"),
    ("routine unknown device", {"triggers": {}, "actions": {"oven": None}},
     "routines[0].actions.oven", "unknown device 'oven'; expected one of tv, ac, lights, speaker, security"),
    ("missing triggers", {"actions": {}}, "routines[0].triggers", "missing"),
    ("routine not an object", "lights at night", "routines[0]",
     'expected {"triggers": ..., "actions": ...}, got a string "lights at night"'),
]


@pytest.mark.parametrize("name,routine,field,message", ROUTINE_CASES, ids=[c[0] for c in ROUTINE_CASES])
def test_bad_routine_drops_the_persona(tmp_path, name, routine, field, message):
    result = validate_dataset(write_layout(tmp_path, n=3, routines={1: dump([routine])}))
    problem = only(result.problems)
    assert (Path(problem.file).name, problem.line, problem.field, problem.message) == (
        "routines.jsonl", 2, field, message)
    assert result.dropped == ["persona_001 (line 2)"]
    assert [p.persona_id for p in result.dataset.personas] == ["persona_000", "persona_002"]


LINE_CASES = [
    ("malformed JSON", "sessions.jsonl", '[{"session_id": 0,', "",
     "malformed JSON: Expecting property name enclosed in double quotes at column 19"),
    ("blank line", "routines.jsonl", "   ", "", "blank line; expected one JSON value per line"),
    ("sessions line a string", "sessions.jsonl", dump("hello"), "",
     'expected a list of sessions or {"sessions": [...]}, got a string "hello"'),
    ("sessions object without sessions", "sessions.jsonl", dump({"dialogues": []}), "",
     'expected a list of sessions or {"sessions": [...]}, got an object {"dialogues": []}'),
    ("routines line an object", "routines.jsonl", dump({"triggers": {}}), "routines",
     'expected a list of routines, got an object {"triggers": {}}'),
    ("characters line a number", "characters.jsonl", "42", "",
     'expected the character sketch as a string or an object with "character", got a number 42'),
    ("characters object without character", "characters.jsonl", dump({"name": "Ava"}), "character",
     'missing; the object form of a characters line needs "character" (a string or null)'),
    ("characters name not a string", "characters.jsonl", dump({"character": "x", "name": 7}), "name",
     "expected a string or null, got a number 7"),
]


@pytest.mark.parametrize("name,file,text,field,message", LINE_CASES, ids=[c[0] for c in LINE_CASES])
def test_bad_line_drops_the_persona_on_all_three_files(tmp_path, name, file, text, field, message):
    change = {"characters.jsonl": None, "routines.jsonl": None, "sessions.jsonl": None}
    change[file] = {2: text}
    folder = write_layout(tmp_path, n=3, characters=change["characters.jsonl"],
                          routines=change["routines.jsonl"], sessions=change["sessions.jsonl"])
    result = validate_dataset(folder)
    problem = only(result.problems)
    assert (Path(problem.file).name, problem.line, problem.field, problem.message) == (
        file, 3, field, message)
    assert result.dropped == ["persona_002 (line 3)"] and result.personas_dropped == 1
    assert [p.persona_id for p in result.dataset.personas] == ["persona_000", "persona_001"]


def test_non_utf8_bytes_name_the_line_and_the_rest_is_read(tmp_path):
    folder = write_layout(tmp_path, n=3)
    lines = (folder / "characters.jsonl").read_bytes().split(b"\n")
    lines[1] = b'"Caf\xe9 owner"'  # Latin-1, not UTF-8
    (folder / "characters.jsonl").write_bytes(b"\n".join(lines))
    result = validate_dataset(folder)
    problem = only(result.problems)
    assert (Path(problem.file).name, problem.line) == ("characters.jsonl", 2)
    assert problem.message == "not valid UTF-8: byte 0xe9 at column 5"
    assert result.dropped == ["persona_001 (line 2)"]
    assert len(result.dataset.personas) == 2


def test_line_counts_that_differ_are_named_and_the_extra_personas_dropped(tmp_path):
    folder = write_layout(tmp_path, n=4, sessions=[dump([session(0)])] * 3)
    result = validate_dataset(folder)
    problem = only(result.problems)
    assert (Path(problem.file).name, problem.line) == ("sessions.jsonl", None)
    assert problem.message == ("has 3 line(s) but characters.jsonl has 4; line i of the three "
                               "files must be the same persona")
    assert result.dropped == ["persona_003 (line 4)"]
    assert len(result.dataset.personas) == 3


def test_empty_file(tmp_path):
    folder = write_layout(tmp_path, n=2, routines=[])
    result = validate_dataset(folder)
    problem = only(result.problems)
    assert (Path(problem.file).name, problem.line, problem.message) == (
        "routines.jsonl", None, "empty file; expected one JSON value per line")
    assert result.dropped == ["persona_000 (line 1)", "persona_001 (line 2)"]
    assert result.dataset.personas == []


def test_missing_file(tmp_path):
    folder = write_layout(tmp_path, n=2)
    (folder / "sessions.jsonl").unlink()
    problem = only(validate_dataset(folder).problems)
    assert (Path(problem.file).name, problem.line, problem.message) == (
        "sessions.jsonl", None, "missing file")


@pytest.mark.parametrize("make,message", [
    (lambda d: d, "not a dataset folder: none of characters.jsonl, routines.jsonl, sessions.jsonl is there"),
    (lambda d: d / "nowhere", "no such folder; expected a folder with characters.jsonl, "
                              "routines.jsonl, sessions.jsonl"),
    (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt",
     "expected a folder with characters.jsonl, routines.jsonl, sessions.jsonl, found a file"),
], ids=["folder without the files", "no such folder", "a file, not a folder"])
def test_not_a_dataset_folder(tmp_path, make, message):
    path = make(tmp_path)
    problem = only(validate_dataset(path).problems)
    assert (problem.file, problem.line, problem.message) == (str(path), None, message)
    with pytest.raises(DataError) as err:
        load_dataset(path, lenient=True)  # nothing valid to keep, even leniently
    assert message in str(err.value)


def test_every_problem_is_reported_in_one_pass(tmp_path):
    bad = session(0)
    bad["messages"][1]["role"] = "bot"
    bad["messages"][1]["actions"] = {"ac": {"temperature": 35}, "lights": {"color": "purple"}}
    del bad["meta"]["weather"]
    folder = write_layout(tmp_path, n=3,
                          characters={2: "{oops"},
                          routines={0: dump([{"triggers": {"weather": "foggy"}, "actions": {}}])},
                          sessions={1: dump([bad, session(1), session(1)])})
    problems = validate_dataset(folder).problems
    # file by file, line by line, although read errors are found before record errors
    assert [(Path(p.file).name, p.line) for p in problems][:2] == [("characters.jsonl", 3),
                                                                   ("routines.jsonl", 1)]
    found = {(Path(p.file).name, p.line, p.field) for p in problems}
    assert len(found) == len(problems)
    assert found == {
        ("routines.jsonl", 1, "routines[0].triggers.weather"),
        ("sessions.jsonl", 2, "sessions[0].meta.weather"),
        ("sessions.jsonl", 2, "sessions[0].messages[1].role"),
        ("sessions.jsonl", 2, "sessions[0].messages[1].actions.ac.temperature"),
        ("sessions.jsonl", 2, "sessions[0].messages[1].actions.lights.color"),
        ("sessions.jsonl", 2, "sessions[2].session_id"),  # duplicate of sessions[1]
        ("characters.jsonl", 3, ""),
    }


def test_lenient_drops_exactly_the_bad_records(tmp_path):
    bad = session(1)
    bad["messages"][1]["actions"] = {"ac": {"temperature": 35}}
    folder = write_layout(tmp_path, n=5, routines={1: "not json"},
                          sessions={2: dump([session(0), bad, session(2)]),
                                    4: dump({"sessions": [session(7)]})})
    result = validate_dataset(folder)
    assert result.dropped == ["persona_001 (line 2)", "persona_002 sessions[1] (sessions.jsonl line 3)"]
    assert (result.personas_dropped, result.sessions_dropped) == (1, 1)
    assert (result.personas_seen, result.sessions_seen) == (5, 10)
    kept = result.dataset.by_id()
    assert list(kept) == ["persona_000", "persona_002", "persona_003", "persona_004"]
    assert [s.session_id for s in kept["persona_002"].sessions] == [0, 2]
    assert [s.session_id for s in kept["persona_004"].sessions] == [7]  # {"sessions": [...]} form
    assert result.summary() == ("2 problem(s); kept 4 of 5 personas and 7 of 10 sessions; "
                                "dropped 1 persona(s) and 1 single session(s)")
    assert load_dataset(folder, lenient=True) == result.dataset
    with pytest.raises(DataError) as err:
        load_dataset(folder)
    assert isinstance(err.value, PersonalError) and len(err.value.problems) == 2
    assert "routines.jsonl:2: malformed JSON" in str(err.value)
    assert "sessions.jsonl:3: sessions[1].messages[1].actions.ac.temperature: expected an integer " \
           "in 16..30, got 35" in str(err.value)


def test_lenient_load_logs_what_was_dropped(tmp_path, caplog):
    folder = write_layout(tmp_path, n=2, sessions={0: "[1, 2"})
    with caplog.at_level("WARNING"):
        ds = load_dataset(folder, lenient=True)
    assert [p.persona_id for p in ds.personas] == ["persona_001"]
    assert "persona_000 (line 1)" in caplog.text


def test_character_object_form_fills_name_archetype_and_id(tmp_path):
    lines = [dump({"character": "Ava, a nurse.", "name": "Ava", "archetype": "night owl"}),
             dump({"persona_id": "user_b", "character": None}), "null"]
    result = validate_dataset(write_layout(tmp_path, n=3, characters=lines))
    assert result.ok
    a, b, c = result.dataset.personas
    assert (a.persona_id, a.character, a.name, a.archetype) == (
        "persona_000", "Ava, a nurse.", "Ava", "night owl")
    assert (b.persona_id, b.character) == ("user_b", None)
    assert (c.persona_id, c.character, c.name) == ("persona_002", None, None)


def test_duplicate_persona_id_is_a_problem(tmp_path):
    lines = [dump("a"), dump({"persona_id": "persona_000", "character": "b"})]
    result = validate_dataset(write_layout(tmp_path, n=2, characters=lines))
    problem = only(result.problems)
    assert (Path(problem.file).name, problem.line, problem.field, problem.message) == (
        "characters.jsonl", 2, "persona_id", "duplicate persona id 'persona_000', already used on line 1")
    assert result.dropped == ["persona_000 (line 2)"]


def test_session_without_meta_has_unknown_context(tmp_path):
    no_meta = session(0)
    del no_meta["meta"]
    null_meta = dict(session(1), meta=None)
    result = validate_dataset(write_layout(tmp_path, n=1, sessions={0: dump([no_meta, null_meta])}))
    assert result.ok
    assert [s.meta for s in result.dataset.personas[0].sessions] == [None, None]


def test_bom_and_crlf_line_ends_are_accepted(tmp_path):
    folder = write_layout(tmp_path, n=2)
    for name in ("characters.jsonl", "sessions.jsonl"):
        data = (folder / name).read_bytes().replace(b"\n", b"\r\n")
        (folder / name).write_bytes(b"\xef\xbb\xbf" + data)
    result = validate_dataset(folder)
    assert result.ok and len(result.dataset.personas) == 2
    assert result.dataset.personas[0].character == "Persona 0 likes dim light."


def test_unknown_session_keys_are_ignored(tmp_path):
    extra = copy.deepcopy(session(0))
    extra["source"] = "elsewhere"
    extra["messages"][0]["timestamp"] = 3
    result = validate_dataset(write_layout(tmp_path, n=1, sessions={0: dump([extra])}))
    assert result.ok and result.dataset.personas[0].sessions[0].messages[0].text == "Dim the lights, please."
