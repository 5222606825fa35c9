"""Property-based: valid data files corrupted at random never break `personal data validate`.

For every corruption (a line truncated, a byte flipped, a line dropped or duplicated, a value
swapped for another type, a value out of its range): exit 0 or 2 (never 1), no traceback,
every problem names its file (and its line and field once the file parses); with
`--lenient`, a corruption inside one session drops exactly that session, listed. Config
overrides with random values are either accepted or refused naming the key. A bounded
number of examples runs by default; the `slow` run tries many more.
"""
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personal.cli import main
from personal.config import ConfigError, load_config
from personal.data.synth import write_synth

FILES = ("characters.jsonl", "routines.jsonl", "sessions.jsonl")
FEW = settings(max_examples=25, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
MANY = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
#: A problem line: `file:line: field: message`, `file:line: message` or `file: message`.
PROBLEM = re.compile(r"^\S+\.jsonl(:\d+)?: .+")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clean")
    write_synth(folder, users=3, sessions=3, seed=0)
    return {name: (folder / name).read_bytes() for name in FILES}


def validate(files: dict[str, bytes], capsys, *flags) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            (Path(d) / name).write_bytes(data)
        with pytest.raises(SystemExit) as exc:
            main(["data", "validate", d, *flags])
            raise SystemExit(0)
    return exc.value.code or 0, capsys.readouterr().err


# --- byte- and line-level corruption -----------------------------------------------------------

@st.composite
def raw_corruption(draw, clean_files):
    name = draw(st.sampled_from(FILES))
    lines = clean_files[name].split(b"\n")[:-1]
    i = draw(st.integers(0, len(lines) - 1))
    kind = draw(st.sampled_from(["truncate", "flip", "drop", "duplicate", "blank"]))
    line = lines[i]
    if kind == "truncate":
        lines[i] = line[:draw(st.integers(0, max(len(line) - 1, 0)))]
    elif kind == "flip":
        at = draw(st.integers(0, len(line) - 1))
        lines[i] = line[:at] + bytes([line[at] ^ draw(st.integers(1, 255))]) + line[at + 1:]
    elif kind == "drop":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, line)
    else:
        lines[i] = b"   "
    return {**clean_files, name: b"\n".join(lines) + b"\n"}


def check_raw(files, capsys):
    for flags in ((), ("--lenient",)):
        code, err = validate(files, capsys, *flags)
        assert code in (0, 2), (code, err)
        assert "Traceback" not in err
        problems = [ln for ln in err.splitlines() if ".jsonl" in ln and not ln.startswith(" ")]
        assert all(PROBLEM.match(ln) for ln in problems), problems
        if code == 2 and not flags:
            assert problems and "nothing was changed" in err


def check_all(profile, cases, check, capsys) -> None:
    """Run `check(case, capsys)` on the cases hypothesis draws under `profile`."""
    @profile
    @given(cases)
    def run(case):
        check(case, capsys)

    run()


def test_random_raw_corruption_is_reported_never_raised(clean, capsys):
    check_all(FEW, raw_corruption(clean), check_raw, capsys)


@pytest.mark.slow
def test_many_random_raw_corruptions(clean, capsys):
    check_all(MANY, raw_corruption(clean), check_raw, capsys)


# --- value-level corruption inside one session -------------------------------------------------

BAD_VALUES = {
    "role": [5, None, "system", ""],
    "text": [None, 3, "", "\u0000", ["a"]],
    "meta": ["morning", 7, {"weather": "foggy"}],
    "session_id": ["zero", -1, 1.5],
    "actions": [{"ac": {"temperature": 99}}, {"lights": {"brightness": -1}},
                {"tv": {"input_source": "VHS"}}, {"toaster": {"power": True}}, "on"],
}


@st.composite
def session_corruption(draw, clean_files):
    """(files, persona index, session index, what was changed) with one session broken."""
    lines = clean_files["sessions.jsonl"].decode("utf-8").splitlines()
    p = draw(st.integers(0, len(lines) - 1))
    sessions = json.loads(lines[p])
    k = draw(st.integers(0, len(sessions) - 1))
    field = draw(st.sampled_from(sorted(BAD_VALUES)))
    value = draw(st.sampled_from(BAD_VALUES[field]))
    session = sessions[k]
    if field in ("meta", "session_id"):
        session[field] = value
    else:
        msgs = session["messages"]
        roles = [j for j, m in enumerate(msgs) if m["role"] == "assistant"] \
            if field == "actions" else list(range(len(msgs)))
        msgs[draw(st.sampled_from(roles))][field] = value
    lines[p] = json.dumps(sessions)
    files = {**clean_files, "sessions.jsonl": ("\n".join(lines) + "\n").encode("utf-8")}
    return files, p, k, f"{field}={value!r}"


def check_session(case, capsys):
    files, p, k, what = case
    code, err = validate(files, capsys)
    assert code == 2 and "Traceback" not in err, what
    assert f"sessions.jsonl:{p + 1}: sessions[{k}]" in err, (what, err)
    code, err = validate(files, capsys, "--lenient")
    assert code == 0, (what, err)
    dropped = [ln.strip() for ln in err.splitlines() if ln.startswith("  ")]
    assert dropped == [f"persona_{p:03d} sessions[{k}] (sessions.jsonl line {p + 1})"], \
        (what, err)


def test_a_broken_session_is_named_and_exactly_it_is_dropped(clean, capsys):
    check_all(FEW, session_corruption(clean), check_session, capsys)


@pytest.mark.slow
def test_many_broken_sessions(clean, capsys):
    check_all(MANY, session_corruption(clean), check_session, capsys)


# --- config overrides --------------------------------------------------------------------------

KEYS = ["lora.rank", "lora.dropout", "lora.alpha", "train.lr", "train.batch_size",
        "train.epochs", "train.warmup_frac", "train.patience", "eval.split", "eval.alpha",
        "generation.max_new_tokens", "generation.top_p", "data.val_frac", "model.dtype",
        "ray.lanes", "no.such_key"]
JUNK = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=8), st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


@FEW
@given(key=st.sampled_from(KEYS), value=JUNK)
def test_a_random_override_is_accepted_or_refused_naming_its_key(key, value):
    item = f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
    try:
        cfg = load_config(None, [item])
    except ConfigError as err:
        assert key in str(err) or key.split(".")[0] in str(err), (item, str(err))
        return
    section, field = key.split(".")
    assert getattr(getattr(cfg, section), field) is not None or value is None
