"""No input breaks it, nothing is lost: commands refuse up front, exit 2, name the problem and
write nothing. Each case here was reproduced on the release before (exit 0 or 1, data
overwritten, work started)."""
import json
from pathlib import Path

import pytest

from personal.cli import main
from personal.data.safety import check_name, child_path, is_safe_name
from personal.errors import PersonalError

ASSETS = Path(__file__).parent / "assets" / "cleaned"


def run_cli(capsys, *args):
    """(exit code, stdout, stderr) of the CLI run in-process."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def dataset(tmp_path, capsys):
    """A 4-user dataset with its splits file, made by the CLI."""
    path = tmp_path / "data"
    assert run_cli(capsys, "data", "synth", "--out", path, "--users", 4, "--sessions", 5)[0] == 0
    assert run_cli(capsys, "data", "split", path)[0] == 0
    return path


# --- names that become paths -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path", "a/../../b", "..", ".hidden",
                                  "", "a b", "x" * 129, "naïve", "-rf", None, 3])
def test_a_path_like_name_is_refused(name):
    assert not is_safe_name(name)
    with pytest.raises(PersonalError, match="not a plain name"):
        child_path(Path("/tmp/run"), name, "persona id")


def test_plain_names_pass():
    for name in ("persona_000", "bob", "cluster_03", "user-7.v2", "_x"):
        assert check_name(name, "persona id") == name


@pytest.mark.parametrize("pid", ["../../etc/passwd", "/abs/path", "a/../../b"])
def test_a_path_like_persona_id_is_refused_at_import(tmp_path, capsys, pid):
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text(json.dumps({"persona_id": pid, "session_id": 0, "messages": [
        {"role": "user", "text": "Lights at 40 please."},
        {"role": "assistant", "text": "Lights are at 40."}]}) + "\n", encoding="utf-8")
    splits = tmp_path / "s.json"
    splits.write_text(json.dumps({pid: {"train": [0], "val": [], "test": []}}), encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "import", "--dialogues", dialogues, "--splits", splits,
                           "--out", tmp_path / "out")
    assert code == 2 and "d.jsonl:1: persona_id:" in err and "not a plain name" in err
    assert not (tmp_path / "out").exists()


def test_a_path_like_persona_id_is_refused_at_validation(dataset, capsys):
    chars = dataset / "characters.jsonl"
    lines = chars.read_text(encoding="utf-8").splitlines()
    lines[1] = json.dumps({"character": "A tester.", "persona_id": "../../etc/passwd"})
    chars.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "characters.jsonl:2: persona_id:" in err and "not a plain name" in err


# --- nothing is written onto existing data -----------------------------------------------------

def test_synth_refuses_a_non_empty_out_and_force_replaces_it_with_its_splits(dataset, capsys):
    before = snapshot(dataset)
    code, _, err = run_cli(capsys, "data", "synth", "--out", dataset, "--users", 3, "--sessions", 4)
    assert code == 2 and "is not empty" in err and "--force" in err
    assert snapshot(dataset) == before
    code, _, err = run_cli(capsys, "data", "synth", "--out", dataset, "--users", 3, "--sessions", 4,
                           "--force")
    assert code == 0 and "removed the stale" in err
    assert not (dataset / "splits.json").exists()  # it described the old users
    assert len((dataset / "sessions.jsonl").read_text().splitlines()) == 3


def test_validate_never_writes_onto_its_input(dataset, capsys):
    before = snapshot(dataset)
    for out in (dataset, dataset / "clean", dataset.parent):
        code, _, err = run_cli(capsys, "data", "validate", dataset, "--lenient", "--out", out,
                               "--force")
        assert code == 2 and "never writes onto the data it reads" in err, out
    assert snapshot(dataset) == before


def test_import_refuses_an_existing_dataset(dataset, capsys):
    before = snapshot(dataset)
    code, _, err = run_cli(capsys, "data", "import", "--dialogues", ASSETS / "dialogues.jsonl",
                           "--splits", ASSETS / "splits.json", "--out", dataset)
    assert code == 2 and "is not empty" in err
    assert snapshot(dataset) == before


def test_split_refuses_to_replace_a_splits_file_without_force(dataset, capsys):
    before = (dataset / "splits.json").read_bytes()
    code, _, err = run_cli(capsys, "data", "split", dataset, "--cold-start", 1)
    assert code == 2 and "splits.json exists: pass --force" in err
    assert (dataset / "splits.json").read_bytes() == before
    assert run_cli(capsys, "data", "split", dataset, "--cold-start", 1, "--force")[0] == 0
    assert (dataset / "splits.json").read_bytes() != before


def test_an_out_that_is_a_file_is_named(dataset, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine\n")
    for args in (["data", "synth", "--out", a_file], ["data", "validate", dataset, "--lenient",
                                                        "--out", a_file],
                 ["data", "import", "--dialogues", ASSETS / "dialogues.jsonl", "--splits",
                  ASSETS / "splits.json", "--out", a_file]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and f"{a_file} is a file, not a folder" in err, args
    assert a_file.read_text() == "mine\n"


def test_lenient_keeping_nothing_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("characters.jsonl", "routines.jsonl", "sessions.jsonl"):
        (empty / name).write_text("", encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "validate", empty, "--lenient", "--out",
                           tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()


# --- refused before any work starts ------------------------------------------------------------

def test_a_mistyped_data_folder_is_an_error_not_invented_users(tmp_path, capsys):
    typo = tmp_path / "evall"
    code, _, err = run_cli(capsys, "train", "unified_lora", "--data", typo, "--run",
                           tmp_path / "run")
    assert code == 2 and "no such data folder" in err and "personal data synth" in err
    assert not typo.exists() and not (tmp_path / "run").exists()


def test_a_data_file_or_run_file_is_named(dataset, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "unified_lora", "--data", dataset / "sessions.jsonl",
                           "--run", tmp_path / "run")
    assert code == 2 and "not a dataset folder (a file)" in err
    run_file = tmp_path / "run.txt"
    run_file.write_text("x")
    code, _, err = run_cli(capsys, "train", "unified_lora", "--data", dataset, "--run", run_file)
    assert code == 2 and "is a file, not a run folder" in err


@pytest.mark.parametrize("override,message", [("lora.rank=0", "lora.rank must be at least 1"),
                                              ("train.batch_size=0", "train.batch_size"),
                                              ("eval.split=bogus", "eval.split must be one of")])
def test_a_bad_setting_stops_before_any_work(dataset, tmp_path, capsys, override, message):
    code, _, err = run_cli(capsys, "train", "unified_lora", "--data", dataset, "--run",
                           tmp_path / "run", override)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_an_unknown_strategy_is_not_recorded_in_the_run(dataset, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "foo", "--data", dataset, "--run", tmp_path / "run")
    assert code == 2 and "unknown strategy 'foo'" in err
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, "train", "per_user_lora", "--data", dataset, "--run",
                           tmp_path / "run", "strategy.per_user_lora.epochz=3")
    assert code == 2 and "strategy.per_user_lora.epochz" in err  # the section is named
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("turns", ["-5", "0"])
def test_stats_checks_its_options_first(dataset, capsys, turns):
    code, _, err = run_cli(capsys, "data", "stats", dataset, "--max-ceiling-turns", turns)
    assert code == 2 and "--max-ceiling-turns must be at least 1" in err


@pytest.mark.parametrize("option, value, message", [
    ("--reply-session", "median", "--reply-session must be one of first, middle, last"),
    ("--reply-messages", "1", "--reply-messages must be at least 2")])
def test_stats_checks_the_reply_baseline_shape_first(dataset, capsys, option, value, message):
    code, _, err = run_cli(capsys, "data", "stats", dataset, option, value)
    assert code == 2 and message in err


def test_synth_has_a_size_limit(tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "synth", "--out", tmp_path / "big", "--sessions",
                           100000)
    assert code == 2 and "--sessions in 1..2000" in err and not (tmp_path / "big").exists()


# --- what validation accepted silently ---------------------------------------------------------

def edit_first_session(dataset: Path, change) -> None:
    """Apply `change(messages)` to the first session of the first persona."""
    path = dataset / "sessions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    sessions = json.loads(lines[0])
    change(sessions[0]["messages"])
    lines[0] = json.dumps(sessions)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def user(text="Lights at 40 please."):
    return {"role": "user", "text": text}


def assistant(text="The lights are at 40."):
    return {"role": "assistant", "text": text}


@pytest.mark.parametrize("messages,field,message", [
    ([user(), user(), assistant()], "messages[1].role", "two user turns in a row"),
    ([user(), assistant(), assistant(), assistant()], "messages[2].role",
     "two assistant turns in a row"),
    ([user(), assistant(), user()], "messages[2].role", "the last user turn has no reply"),
    ([user("\x00\x00"), assistant()], "messages[0].text", "control character U+0000"),
    ([user("hi \ud800 there"), assistant()], "messages[0].text", "lone surrogate U+D800"),
])
def test_a_malformed_session_is_named(dataset, capsys, messages, field, message):
    edit_first_session(dataset, lambda m: m.__setitem__(slice(None), messages))
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2
    assert f"sessions.jsonl:1: sessions[0].{field}: " in err and message in err, err


def test_a_repeated_json_key_is_named(dataset, capsys):
    path = dataset / "sessions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].replace('"role": "user"', '"role": "user", "role": "assistant"', 1)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "sessions.jsonl:1: key 'role' appears twice in one object" in err


def test_utf16_and_dangling_links_are_named(dataset, capsys):
    path = dataset / "characters.jsonl"
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "characters.jsonl: UTF-16 text" in err
    path.unlink()
    path.symlink_to(dataset / "nowhere.jsonl")
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "characters.jsonl: a symbolic link that leads nowhere" in err


def test_json_errors_read_plainly(dataset, capsys):
    path = dataset / "routines.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = '["unterminated'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "routines.jsonl:3: malformed JSON: Unterminated string starting at " \
                         "column 2" in err and "at at" not in err


def test_validate_checks_the_folders_own_splits_file(dataset, capsys):
    (dataset / "splits.json").write_text('{"persona_000": {"train": [99], "val": [], '
                                         '"test": []}}', encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "persona_000.train[0]: session index 99 out of range" in err


def test_a_split_without_training_sessions_is_refused(dataset, capsys):
    code, _, err = run_cli(capsys, "data", "split", dataset, "--train-frac", 0, "--force")
    assert code == 2 and "--train-frac must be in (0, 1]" in err
    empty = {f"persona_{i:03d}": {"train": [], "val": [0], "test": [1]} for i in range(4)}
    (dataset / "splits.json").write_text(json.dumps(empty), encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "every train list is empty" in err


def test_a_persona_without_sessions_and_a_splits_file_missing_one_are_named(dataset, capsys):
    splits = json.loads((dataset / "splits.json").read_text(encoding="utf-8"))
    del splits["persona_003"]
    (dataset / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "splits.json: no entry for 1 persona(s) of the dataset, e.g. " \
                         "persona_003" in err
    path = dataset / "sessions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = "[]"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "validate", dataset)
    assert code == 2 and "sessions.jsonl:3: no sessions; a persona needs at least one" in err


ROUTINES = [{"triggers": {"time_of_day": "morning"}, "actions": {"lights": {"brightness": 30}}}]


@pytest.mark.parametrize("first,named", [
    (lambda line: line[:-9], "d.jsonl:1: malformed JSON"),  # the line with the routines, cut
    (lambda line: line.replace(json.dumps(ROUTINES), '{"x": 1}'),
     "d.jsonl:1: routines: expected a list of routines"),
])
def test_a_broken_routines_line_is_named_once_not_on_every_session(tmp_path, capsys, first,
                                                                   named):
    """The dialogue that carries a persona's routines is broken: that line is the problem,
    not "routine index out of range" on each of the persona's other dialogues (before: one
    per dialogue, as if the persona had no routines)."""
    def dialogue(sid, **more):
        return json.dumps({"persona_id": "persona_000", "session_id": sid, "messages": [
            user(), assistant()], "applied_routines": [0], **more})

    lines = [first(dialogue(0, routines=ROUTINES))] + [dialogue(sid) for sid in (1, 2, 3)]
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = tmp_path / "s.json"
    splits.write_text(json.dumps({"persona_000": {"train": [1, 2], "val": [], "test": [3]}}),
                      encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "import", "--dialogues", dialogues, "--splits", splits,
                           "--out", tmp_path / "out")
    assert code == 2 and named in err
    assert "out of range" not in err and err.count("d.jsonl:") == 1, err
    assert not (tmp_path / "out").exists()
