"""The cleaned-dialogues importer: grouping, line index -> session position, optional fields,
and precise errors."""
import json
from pathlib import Path

import pytest

from personal.data.importer import import_dialogues, write_import
from personal.data.io import load_dataset, read_splits
from personal.errors import DataError

ASSETS = Path(__file__).parent / "assets" / "cleaned"
DIALOGUES, SPLITS = ASSETS / "dialogues.jsonl", ASSETS / "splits.json"


def test_dialogues_are_grouped_per_persona_in_file_order():
    ds, _ = import_dialogues(DIALOGUES, SPLITS)
    assert [p.persona_id for p in ds.personas] == ["persona_000", "persona_001", "persona_002"]
    ava, bob, noah = ds.personas
    assert [s.session_id for s in ava.sessions] == [0, 1, 2]
    assert [s.session_id for s in bob.sessions] == [0, 1, 2]
    assert bob.sessions[1].messages[3].text == "Alarm volume is now 70."
    assert bob.sessions[2].session_summarization == "The user asked for cooler air."
    assert ava.sessions[0].applied_routines == [0]


def test_missing_optional_fields_stay_unknown():
    ds, _ = import_dialogues(DIALOGUES, SPLITS)
    ava, bob, noah = ds.personas
    assert ava.character == "Ava is a night-shift nurse who speaks briefly."
    assert ava.routines[0].actions == {"lights": {"brightness": 30, "color": "warm"}}  # null tv dropped
    assert ava.sessions[0].meta["sun_phase"] == "before_sunrise"
    assert ava.sessions[2].meta is None  # this dialogue has no meta: unknown context
    assert (bob.character, bob.routines) == (None, [])
    assert all(s.meta is None for s in bob.sessions)
    assert (noah.character, noah.routines) == ("Noah is a retired teacher who likes a chat.", [])


def test_line_indices_become_session_positions():
    # dialogue lines: 0 p0/s0, 1 p1/s0, 2 p0/s1, 3 p1/s1, 4 p0/s2, 5 p2/s0, 6 p1/s2
    _, splits = import_dialogues(DIALOGUES, SPLITS)
    p0, p1, p2 = splits["persona_000"], splits["persona_001"], splits["persona_002"]
    assert (p0.train, p0.val, p0.test) == ([0, 1], [], [2])
    assert (p1.train, p1.val, p1.test) == ([0], [1], [2])
    assert (p2.train, p2.val, p2.test, p2.cold_start) == ([], [0], [], True)


def test_write_import_round_trips_through_the_canonical_layout(tmp_path):
    ds, splits = write_import(DIALOGUES, SPLITS, tmp_path / "out")
    assert load_dataset(tmp_path / "out") == ds
    assert read_splits(tmp_path / "out" / "splits.json", ds) == splits
    characters = (tmp_path / "out" / "characters.jsonl").read_text(encoding="utf-8").splitlines()
    assert characters[1] == "null"  # persona_001 has no character


def dialogue(pid, sid, **extra):
    d = {"persona_id": pid, "session_id": sid,
         "messages": [{"role": "user", "text": f"hello {sid}"}, {"role": "assistant", "text": "Done."}]}
    d.update(extra)
    return d


def write_pair(tmp_path, dialogues, splits):
    d = tmp_path / "dialogues.jsonl"
    d.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in dialogues),
                 encoding="utf-8")
    s = tmp_path / "splits.json"
    s.write_text(splits if isinstance(splits, str) else json.dumps(splits), encoding="utf-8")
    return d, s


def test_custom_persona_ids_survive_import_and_reload(tmp_path):
    d, s = write_pair(tmp_path, [dialogue("bob", 0), dialogue("alice", 0), dialogue("bob", 1)],
                      {"alice": {"train": [1], "val": [], "test": []},
                       "bob": {"train": [0], "val": [], "test": [2]}})
    ds, splits = write_import(d, s, tmp_path / "out")
    assert [p.persona_id for p in ds.personas] == ["bob", "alice"]
    assert splits["bob"].test == [1]
    assert load_dataset(tmp_path / "out") == ds
    assert read_splits(tmp_path / "out" / "splits.json", ds) == splits


def problems_of(tmp_path, dialogues, splits):
    d, s = write_pair(tmp_path, dialogues, splits)
    with pytest.raises(DataError) as err:
        import_dialogues(d, s)
    return [(Path(p.file).name, p.line, p.field, p.message) for p in err.value.problems]


EMPTY = {"train": [], "val": [], "test": []}
MISSING_META = ("missing context field; a session's meta needs all of time_of_day, day_of_week, "
                "sun_phase, weather, outdoor_temp")


def test_split_line_index_errors(tmp_path):
    found = problems_of(tmp_path, [dialogue("p0", 0), dialogue("p1", 0), dialogue("p0", 1)],
                        '{"p0": {"train": [0, 1], "val": [], "test": [9]},\n'
                        ' "p1": {"train": [1], "val": [], "test": [1]},\n'
                        ' "p7": {"train": [], "val": [], "test": []}}')
    assert found == [
        ("splits.json", 2, "p1.test[0]", "index 1 is also in train; train, val and test must be disjoint"),
        ("splits.json", 1, "p0.train[1]", f"line index 1 ({tmp_path / 'dialogues.jsonl'} line 2) is a "
                                          "dialogue of p1, not p0"),
        ("splits.json", 1, "p0.test[0]", "line index 9 out of range: "
                                         f"{tmp_path / 'dialogues.jsonl'} has 3 line(s)"),
        ("splits.json", 3, "p7", f"unknown persona; no dialogue in {tmp_path / 'dialogues.jsonl'} has "
                                 "this persona_id"),
    ]


def test_dialogue_errors_are_all_reported(tmp_path):
    bad_meta = dialogue("p0", 1, meta={"time_of_day": "noon"})
    found = problems_of(tmp_path, [
        dialogue("p0", 0, character="A nurse.", routines=[{"triggers": {}, "actions": {}}]),
        bad_meta,
        dialogue("p0", 0, character="A pilot."),
        "{not json",
        {"session_id": 3, "messages": []},
        dialogue("p1", 0, applied_routines=[2]),
        dialogue("p0", 2, routines=[]),
        ["a", "list"],
    ], {"p0": EMPTY})
    assert found == [
        ("dialogues.jsonl", 2, "meta.day_of_week", MISSING_META),
        ("dialogues.jsonl", 2, "meta.sun_phase", MISSING_META),
        ("dialogues.jsonl", 2, "meta.weather", MISSING_META),
        ("dialogues.jsonl", 2, "meta.outdoor_temp", MISSING_META),
        ("dialogues.jsonl", 2, "meta.time_of_day",
         "expected one of 'morning', 'afternoon', 'evening', 'night', got \"noon\""),
        ("dialogues.jsonl", 3, "character", "differs from the character of p0 on line 1; a persona has "
                                            "one character"),
        ("dialogues.jsonl", 3, "session_id", "duplicate session id 0 for p0, already used on line 1"),
        ("dialogues.jsonl", 4, "", "malformed JSON: Expecting property name enclosed in double quotes "
                                   "at column 2"),
        ("dialogues.jsonl", 5, "persona_id", "expected a non-empty string, got nothing"),
        ("dialogues.jsonl", 6, "applied_routines[0]", "routine index 2 out of range: p1 has 0 routine(s)"),
        ("dialogues.jsonl", 7, "routines", "differ from the routines of p0 on line 1; a persona has one "
                                           "list of routines"),
        ("dialogues.jsonl", 8, "", "expected a dialogue object with persona_id, session_id and "
                                   'messages, got a list ["a", "list"]'),
    ]


def test_missing_files_are_data_errors(tmp_path):
    with pytest.raises(DataError) as err:
        import_dialogues(tmp_path / "nope.jsonl", tmp_path / "nope.json")
    assert [(Path(p.file).name, p.message) for p in err.value.problems] == [
        ("nope.jsonl", "missing file"), ("nope.json", "missing file")]
