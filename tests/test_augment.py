"""Data augmentation (augmented_lora): only training sessions feed it, validation, test and
cold-start users stay byte-identical, every kept synthetic turn passes the parser check and a
disagreeing one is rejected and counted, the output is a valid dataset with provenance, and
bad options are refused naming the option."""
import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from personal.data.io import read_splits, session_to_json
from personal.data.schema import Message, Session
from personal.data.synth import write_synth
from personal.data.splits import make_splits
from personal.data.validate import load_dataset
from personal.errors import PersonalError
from personal.strategies import augment
from personal.strategies.augment import (Counts, augment_users, implied, paraphrase, reword,
                                         synthesis, write_augmented)
from personal.strategies.registry import get_strategy, strategy_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("aug") / "data"
    ds = write_synth(path, users=6, sessions=10, seed=3)
    splits = make_splits(ds, train_frac=0.6, val_frac=0.2, cold_start=1, seed=0)
    return ds, splits


def test_only_training_sessions_feed_it_and_the_rest_is_unchanged(world):
    ds, splits = world
    out = augment_users(ds, splits, 12, ["paraphrase", "context_variation"], seed=0)
    for before, after in zip(ds.personas, out.dataset.personas):
        sp, new_sp = splits[before.persona_id], out.splits[before.persona_id]
        assert new_sp.val == sp.val and new_sp.test == sp.test
        for i in sp.val + sp.test:  # byte-identical
            assert session_to_json(after.sessions[i]) == session_to_json(before.sessions[i])
        if sp.cold_start:
            assert after.sessions == before.sessions and new_sp.train == sp.train
            continue
        train_ids = {before.sessions[i].session_id for i in sp.train}
        added = after.sessions[len(before.sessions):]
        assert added and len(new_sp.train) == len(sp.train) + len(added) <= 12
        for s in added:
            assert {m.provenance["source_session"] for m in s.messages} <= train_ids


def test_a_reworded_turn_keeps_the_settings_it_asks_for():
    rng = random.Random(0)
    text = "It's cold out. Put the lamps at 85 with neutral light, please."
    new = reword(text, rng)
    assert new and new != text
    assert implied(new) == implied(text) == {("lights", "brightness", 85),
                                             ("lights", "color", "neutral")}


def test_a_paraphrase_whose_settings_disagree_is_rejected(monkeypatch):
    s = Session(0, {"time_of_day": "evening"}, [
        Message("user", "Set the AC to 22, please."),
        Message("assistant", "I've set the AC to 22.", {"ac": {"temperature": 22}})])
    monkeypatch.setattr(augment, "reword", lambda text, rng: "Set the AC to 25, please.")
    counts = Counts()
    assert paraphrase(s, random.Random(0), counts) is None
    assert counts.rejected_turns == 1 and counts.not_applicable == 1


def test_synthesis_keeps_agreeing_turns_and_rejects_the_rest():
    s = Session(5, {"time_of_day": "evening"}, [
        Message("user", "Set the AC to 22."),
        Message("assistant", "I've set the AC to 22.", {"ac": {"temperature": 22}}),
        Message("user", "And the lights to 40."),
        Message("assistant", "Lights are at 40%.", {"lights": {"brightness": 40}})])
    persona = type("P", (), {"persona_id": "u"})()
    replies = ["Done: the AC is now at 22 degrees.", "I've set the lights to 90%."]
    counts = Counts()
    out = synthesis(s, persona, lambda exs: replies[:len(exs)], 6, counts)
    assert counts.rejected_turns == 1                       # 90 is not the 40 it replaces
    assert out.messages[1].text == replies[0]
    assert out.messages[1].provenance == {"method": "synthesis", "source_session": 5,
                                          "source_turn": 1}
    assert out.messages[3].text == "Lights are at 40%."     # the original turn stays
    assert out.messages[3].provenance["method"] == "copy"


def test_the_written_folder_is_a_valid_dataset_with_provenance(world, tmp_path):
    ds, splits = world
    result = augment_users(ds, splits, 12, ["paraphrase"], seed=0)
    folder = write_augmented(result, tmp_path / "out", {"methods": ["paraphrase"]})
    again = load_dataset(folder)
    read_splits(folder / "splits.json", again)
    record = json.loads((folder / augment.RECORD).read_text())
    assert record["totals"]["paraphrase"]["kept"] == sum(
        len(p.sessions) for p in again.personas) - sum(len(p.sessions) for p in ds.personas)
    made = [m for p in again.personas for s in p.sessions for m in s.messages if m.provenance]
    assert made and {m.provenance["method"] for m in made} <= {"paraphrase", "copy"}
    r = subprocess.run([sys.executable, "-m", "personal.cli", "data", "validate", str(folder)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_a_bad_provenance_is_named(world, tmp_path):
    ds, splits = world
    folder = write_augmented(augment_users(ds, splits, 12, ["paraphrase"], seed=0),
                             tmp_path / "bad")
    lines = (folder / "sessions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first[-1]["messages"][0]["provenance"]["source_turn"] = "zero"
    lines[0] = json.dumps(first)
    (folder / "sessions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PersonalError, match=r"provenance\.source_turn.*expected int"):
        load_dataset(folder)


def test_a_target_per_user_gives_each_user_their_own_size(world):
    ds, splits = world
    train = {p: len(sp.train) for p, sp in splits.items() if not sp.cold_start}
    want = {p: 2 * n for p, n in train.items()}
    out = augment_users(ds, splits, want, ["paraphrase"], seed=0)
    for p, n in want.items():
        assert len(out.splits[p].train) == n  # paraphrase applies to these users' turns


def test_a_target_below_the_real_count_is_refused(world):
    ds, splits = world
    with pytest.raises(PersonalError, match="target_size 3 is below the 6 real"):
        augment_users(ds, splits, 3, ["paraphrase"])


@pytest.mark.parametrize("options,message", [
    ({"methods": "paraphrase,telepathy"}, "unknown method 'telepathy'"),
    ({"methods": "back_translation"}, "back_translation needs a translation model"),
    ({"methods": "back_translation", "translation_model": "/nonexistent/model"},
     "translation_model=/nonexistent/model: not a local model folder"),
    ({"methods": "synthesis", "synthesis_model": "/tmp"}, "synthesis_model=/tmp: not a local"),
    ({"translation_pivot": " "}, "translation_pivot must name a language"),
    ({"target_size": 0}, "target_size must be >= 1"),
    ({"real_weight": 0}, "real_weight must be an integer >= 1"),
    ({"init": "cluster"}, "init must be base or unified"),
    ({"target_factor": 0.5}, "target_factor must be 0 (use target_size) or >= 1")])
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises(PersonalError, match="strategy.augmented_lora") as err:
        strategy_config(get_strategy("augmented_lora"), options)
    assert message in str(err.value)


def test_the_study_script_writes_nothing_on_bad_input(tmp_path):
    data = tmp_path / "d"
    write_synth(data, users=3, sessions=6, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    script = str(ROOT / "scripts" / "augment_persona_data.py")
    r = subprocess.run([sys.executable, script, "--data", str(data), "--out",
                        str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == 2 and "no splits file" in r.stderr
    assert not (tmp_path / "none").exists()
    r = subprocess.run([sys.executable, "-m", "personal.cli", "data", "split", str(data)],
                       capture_output=True, text=True, cwd=ROOT)
    r = subprocess.run([sys.executable, script, "--data", str(data), "--out", str(out),
                        "--target_size", "8"], capture_output=True, text=True)
    assert r.returncode == 2 and "exists and is not empty; --force" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    r = subprocess.run([sys.executable, script, "--data", str(data), "--out",
                        str(tmp_path / "new"), "--target_size", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(load_dataset(tmp_path / "new").personas) == 3


def test_back_translation_keeps_round_trips_that_imply_the_same_settings():
    s = Session(4, {"time_of_day": "evening"}, [
        Message("user", "Set the AC to 22, please."),
        Message("assistant", "I've set the AC to 22.", {"ac": {"temperature": 22}}),
        Message("user", "Could you put the lamps at 40?"),
        Message("assistant", "Lamps at 40.", {"lights": {"brightness": 40}})])
    there = {"Set the AC to 22, please.": "Stell die Klimaanlage auf 22.",
             "Could you put the lamps at 40?": "Stell die Lampen auf 50."}
    back = {"Stell die Klimaanlage auf 22.": "Please set the AC to 22.",
            "Stell die Lampen auf 50.": "Could you put the lamps at 50?"}  # a wrong number
    calls = []

    def translate(texts, language):
        calls.append(language)
        return [(there if language == "German" else back)[t] for t in texts]

    counts = Counts()
    out = augment.back_translation(s, translate, "German", counts)
    assert calls == ["German", "English"]  # one batch each way per session
    assert out.messages[0].text == "Please set the AC to 22."
    assert out.messages[0].provenance == {"method": "back_translation", "source_session": 4,
                                          "source_turn": 0}
    assert out.messages[2].text == s.messages[2].text  # 50 != 40: the original stays
    assert out.messages[2].provenance["method"] == "copy"
    assert [m.text for m in out.messages[1::2]] == [m.text for m in s.messages[1::2]]
    assert counts.rejected_turns == 1
    same = Counts()  # a round trip that changes nothing makes nothing
    assert augment.back_translation(s, lambda texts, lang: list(texts), "German", same) is None
    assert same.rejected_turns == 2 and same.not_applicable == 1


def test_back_translation_rejects_a_round_trip_that_did_not_come_back():
    """What SmolLM2-135M returned: German that keeps "HDMI1" (the parser reads the same
    setting), and German for a turn that asks for nothing (the parser reads nothing from
    either). Both pass the parser; neither is the source's sentence."""
    s = Session(2, {}, [
        Message("user", "Would you put the TV on HDMI1, please? There's something I really "
                        "want to watch."),
        Message("assistant", "TV on HDMI1.", {"tv": {"input_source": "HDMI1"}}),
        Message("user", "Great, thank you! It's still dark outside!"),
        Message("assistant", "You're welcome.", {})])
    came_back = {s.messages[0].text: "Ich habe die TV in HDMI1, ich bin ein star.",
                 s.messages[2].text: "Das ist klimale."}
    assert implied(came_back[s.messages[0].text]) == implied(s.messages[0].text)
    counts = Counts()
    assert augment.back_translation(s, lambda texts, lang: [came_back.get(t, t) for t in texts],
                                    "German", counts) is None
    assert counts.rejected_turns == 2 and counts.not_applicable == 1
    # a faithful re-wording of the same sentence is kept
    assert augment.same_sentence("Could you please switch the TV to HDMI1? I really want to "
                                 "watch something.", s.messages[0].text)


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A smoke run whose base is also saved as a plain chat-model folder."""
    from personal.distributed.smoke import smoke_config
    from personal.experiment.context import Context

    root = tmp_path_factory.mktemp("augmodel")
    cfg = smoke_config(root, users=3, sessions=6, overrides=["generation.max_new_tokens=8"])
    ctx = Context.create(cfg, root / "run")
    model, tok = ctx.base
    folder = root / "chat_model"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return ctx, folder


def augmented_with(ctx, name, **options):
    """augmented_lora's data unit alone, in a run of its own (`name`) on ctx's world."""
    from personal.experiment.context import Context
    from personal.strategies import augmented

    cfg = dataclasses.replace(ctx.cfg, strategy={"augmented_lora": options})
    run = Context.create(cfg, ctx.run.path.parent / name)
    record = augmented.augment(run, strategy_config(get_strategy("augmented_lora"), options))
    return run, record, augmented


def test_synthesis_through_a_model_folder_equals_synthesis_with_the_runs_base(model_run):
    ctx, folder = model_run
    opts = {"methods": "synthesis", "target_size": 8}
    a, rec_a, aug = augmented_with(ctx, "base", **opts)
    b, rec_b, _ = augmented_with(ctx, "folder", **opts, synthesis_model=str(folder))
    assert rec_a == rec_b
    files = sorted(p.name for p in (a.run.path / aug.DATA).glob("*.jsonl"))
    assert files and all((a.run.path / aug.DATA / f).read_bytes() ==
                         (b.run.path / aug.DATA / f).read_bytes() for f in files)
    # and it is a different input: the model's files, not the run's base key
    assert aug.data_inputs(a, strategy_config(get_strategy("augmented_lora"), opts)) != \
        aug.data_inputs(b, strategy_config(get_strategy("augmented_lora"),
                                           {**opts, "synthesis_model": str(folder)}))


def test_back_translation_through_a_model_folder_checks_every_round_trip(model_run):
    """The built-in tiny base is no translator: what it returns rarely keeps the turn's
    settings. Every attempt is counted, and every kept turn implies its source's settings."""
    from personal.data.validate import load_dataset

    ctx, folder = model_run
    run, record, aug = augmented_with(ctx, "translated", methods="back_translation",
                                      target_size=8, translation_model=str(folder))
    totals = record["totals"]["back_translation"]
    assert totals["kept"] + totals["rejected_turns"] + totals["not_applicable"] > 0
    ds = load_dataset(run.run.path / aug.DATA)
    by_id = {(p.persona_id, s.session_id): s for p in ctx.dataset.personas for s in p.sessions}
    for p in ds.personas:
        for s in p.sessions:
            for i, m in enumerate(s.messages):
                if m.provenance and m.provenance["method"] == "back_translation":
                    src = by_id[(p.persona_id, m.provenance["source_session"])].messages[i]
                    assert implied(m.text) == implied(src.text) and m.text != src.text
    assert totals["kept"] == sum(1 for p in ds.personas for s in p.sessions
                                 if any(m.provenance and m.provenance["method"] ==
                                        "back_translation" for m in s.messages))


def test_the_turn_criterion_finds_contexts_the_session_one_does_not():
    """Session 1 (evening) sets the AC to 22 then the lights to 40; no other session sets
    both, so no whole session matches. Under `night` the user set the AC to 22 (session 2)
    and the lights to 40 (session 3): turn by turn, night qualifies; `weekend` shows only
    the AC (session 4) and does not."""
    def sess(sid, meta, *turns):
        msgs = []
        for t in turns:
            msgs += [Message("user", "x"), Message("assistant", "ok", t)]
        return Session(sid, meta, msgs)

    ac, lights = {"ac": {"temperature": 22}}, {"lights": {"brightness": 40}}
    me = sess(1, {"time_of_day": "evening"}, ac, lights)
    others = [me, sess(2, {"time_of_day": "night"}, ac), sess(3, {"time_of_day": "night"}, lights),
              sess(4, {"day_of_week": "weekend"}, ac)]
    assert augment.donor_sessions(me, others, "session") == []
    assert [o.session_id for o in augment.donor_sessions(me, others, "turn")] == [2, 3]
    counts = Counts()
    out = augment.context_variation(me, others, random.Random(0), counts, "turn")
    assert out.meta == {"time_of_day": "night"} and out.messages[0].provenance["context_from"] in (2, 3)
    assert augment.context_variation(me, others, random.Random(0), Counts(), "session") is None
