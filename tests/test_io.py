"""Reading and writing the canonical layout and splits files: round trips and splits errors."""
import json
from pathlib import Path

import pytest

from personal.data.io import FILES, load_dataset, read_splits, write_dataset, write_splits
from personal.data.schema import Dataset, Message, Persona, Routine, Session, Split
from personal.errors import DataError, PersonalError

META = {"time_of_day": "morning", "day_of_week": "weekend", "sun_phase": "daylight",
        "weather": "sunny", "outdoor_temp": "mild"}


def rich_dataset() -> Dataset:
    """Every optional field used at least once, and left out at least once."""
    ava = Persona(
        persona_id="persona_000", character="Ava, a nurse who speaks briefly.", archetype="night owl",
        name="Ava",
        routines=[Routine({"time_of_day": "morning"}, {"lights": {"brightness": 30, "color": "warm"}}),
                  Routine({}, {"security": {"armed": True, "alarm_volume": 70}})],
        sessions=[
            Session(0, dict(META), [
                Message("user", "Lights low, please. Ça va?"),
                Message("assistant", "Lights at 30, warm.", {"lights": {"brightness": 30, "color": "warm"}},
                        "Warm light at 30 for you.")],
                applied_routines=[0], session_summarization="Dim warm lights."),
            Session(3, None, [Message("user", "Arm it."), Message("assistant", "Armed.")],
                    applied_routines=[]),
        ])
    plain = Persona("persona_001", "Noah likes a chat.", [],
                    [Session(0, dict(META), [Message("user", "Hi")])])
    unknown = Persona("persona_002", None, [], [one_session()])
    return Dataset([ava, plain, unknown])


def one_session() -> Session:
    """The least a persona needs: one session."""
    return Session(0, None, [Message("user", "Hi"), Message("assistant", "Hello.")])


def file_bytes(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in FILES}


def test_round_trip_equal_and_byte_identical(tmp_path):
    ds = rich_dataset()
    write_dataset(ds, tmp_path / "a")
    loaded = load_dataset(tmp_path / "a")
    assert loaded == ds
    write_dataset(loaded, tmp_path / "b")
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    characters = (tmp_path / "a" / "characters.jsonl").read_text(encoding="utf-8").splitlines()
    assert characters[1] == '"Noah likes a chat."'  # canonical ids keep the plain string form
    assert characters[2] == "null"


def test_non_canonical_persona_ids_survive_the_round_trip(tmp_path):
    ds = Dataset([Persona("alice", "A.", [], [one_session()]),
                  Persona("persona_001", "B.", [], [one_session()]),
                  Persona("carol", None, [], [one_session()], name="Carol")])
    write_dataset(ds, tmp_path)
    first = (tmp_path / "characters.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(first[0]) == {"persona_id": "alice", "character": "A."}
    assert json.loads(first[1]) == "B."
    assert load_dataset(tmp_path) == ds


def test_null_devices_are_dropped_in_memory(tmp_path):
    (tmp_path / "characters.jsonl").write_text('"x"\n')
    (tmp_path / "routines.jsonl").write_text(
        '[{"triggers": {}, "actions": {"tv": null, "ac": {"mode": "cool"}, "lights": null}}]\n')
    (tmp_path / "sessions.jsonl").write_text(
        '[{"session_id": 0, "messages": [{"role": "user", "text": "Hi"}]}]\n')
    assert load_dataset(tmp_path).personas[0].routines[0].actions == {"ac": {"mode": "cool"}}


def test_strict_load_raises_a_data_error_never_a_raw_exception(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "missing")
    assert isinstance(err.value, PersonalError)
    assert f"{tmp_path / 'missing'}: no such folder" in str(err.value)


def make_splits():
    return {"persona_000": Split([0], [], [1]), "persona_001": Split([], [0], [], cold_start=True),
            "persona_002": Split([0], [], [])}


def test_splits_round_trip(tmp_path):
    write_splits(make_splits(), tmp_path / "splits.json")
    assert read_splits(tmp_path / "splits.json", rich_dataset()) == make_splits()


def write_json(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


SPLIT_CASES = [
    ("non-integer", '{"persona_000": {"train": [0, 1.5], "val": [], "test": []}}',
     "persona_000.train[1]", "expected an integer index >= 0, got 1.5"),
    ("string index", '{"persona_000": {"train": ["0"], "val": [], "test": []}}',
     "persona_000.train[0]", 'expected an integer index >= 0, got "0"'),
    ("overlap train/test", '{"persona_000": {"train": [0, 1], "val": [], "test": [1]}}',
     "persona_000.test[0]", "index 1 is also in train; train, val and test must be disjoint"),
    ("repeated index", '{"persona_000": {"train": [0, 0], "val": [], "test": []}}',
     "persona_000.train[1]", "index 0 appears twice (also at [0])"),
    ("missing part", '{"persona_000": {"train": [0], "test": []}}',
     "persona_000.val", "missing; expected a list of indices"),
    ("part not a list", '{"persona_000": {"train": 3, "val": [], "test": []}}',
     "persona_000.train", "expected a list of indices, got a number 3"),
    ("unknown key", '{"persona_000": {"train": [], "val": [], "test": [], "dev": []}}',
     "persona_000.dev", "unknown key; expected train, val, test or cold_start"),
    ("cold start with training", '{"persona_000": {"train": [0], "val": [], "test": [], "cold_start": true}}',
     "persona_000.train", "a cold-start persona appears in no training split, got 1 training index(es)"),
    ("entry not an object", '{"persona_000": [0, 1]}',
     "persona_000", "expected an object with train, val and test lists, got a list [0, 1]"),
    ("unknown persona", '{"persona_009": {"train": [], "val": [], "test": []}}',
     "persona_009", "unknown persona; not among the dataset's 3 personas"),
    ("index out of range", '{"persona_000": {"train": [0], "val": [], "test": [2]}}',
     "persona_000.test[0]", "session index 2 out of range: persona_000 has 2 session(s) (0..1)"),
]


@pytest.mark.parametrize("name,text,field,message", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_splits_errors_name_persona_field_and_value(tmp_path, name, text, field, message):
    path = write_json(tmp_path / "splits.json", text)
    with pytest.raises(DataError) as err:
        read_splits(path, rich_dataset())
    problem = err.value.problems[0]
    assert len(err.value.problems) == 1, str(err.value)
    assert (problem.file, problem.line, problem.field, problem.message) == (str(path), 1, field, message)


def test_splits_problems_name_the_line_of_the_entry_and_all_come_together(tmp_path):
    text = json.dumps({"persona_000": {"train": [0], "val": [], "test": [5]},
                       "persona_001": {"train": [0], "val": [0.5], "test": [0]}}, indent=1)
    path = write_json(tmp_path / "splits.json", text)
    with pytest.raises(DataError) as err:
        read_splits(path, rich_dataset())
    found = [(p.line, p.field) for p in err.value.problems]
    line_001 = text.splitlines().index(' "persona_001": {') + 1
    assert found == [(line_001, "persona_001.val[0]"), (line_001, "persona_001.test[0]"),
                     (2, "persona_000.test[0]")]


@pytest.mark.parametrize("content,line,message", [
    (b'{"persona_000": {"train": [0],\n "val": [}', 2, "malformed JSON: Expecting value at column 10"),
    (b"", None, "empty file; expected a JSON object"),
    (b'{"persona_000":\n "\xff"}', 2, "not valid UTF-8: byte 0xff"),
    (b"[1, 2]", None, "expected an object {persona_id: {train, val, test}}, got a list [1, 2]"),
], ids=["malformed JSON", "empty", "non-UTF-8", "not an object"])
def test_unreadable_splits_file(tmp_path, content, line, message):
    path = tmp_path / "splits.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_splits(path)
    problem = err.value.problems[0]
    assert (problem.file, problem.line, problem.message) == (str(path), line, message)


def test_missing_splits_file(tmp_path):
    with pytest.raises(DataError, match="splits.json: missing file"):
        read_splits(tmp_path / "splits.json")
