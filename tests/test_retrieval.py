"""The retrieval strategies: what is retrieved (same user, never the own session), how it is
ranked (similarity, recency, hybrid), how it is written into the prompt, and the script."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from personal.config import save_config
from personal.data.schema import Example, Message
from personal.data.splits import make_splits
from personal.distributed.smoke import smoke_config
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.strategies import retrieval
from personal.strategies.retrieval import RetrievalConfig, RetrievalTrainedConfig
from personal.strategies.retrieval_index import (Exchange, RetrievalSettings, Retriever,
                                                 UserIndex, build_memory, render)

ROOT = Path(__file__).resolve().parents[1]
EVENING = {"time_of_day": "evening", "day_of_week": "weekday", "sun_phase": "after_sunset",
           "weather": "rainy", "outdoor_temp": "cold"}


def settings(**changes) -> RetrievalSettings:
    values = dict(k=3, method="similarity", hybrid_weight=0.5, format="raw", exchange_chars=160)
    return RetrievalSettings(**(values | changes))


def exchange(session: int, user: str = "hi", assistant: str = "ok", actions=None,
             meta=None, turn: int = 1, pid: str = "u1") -> Exchange:
    return Exchange(pid, session, session, turn, user, assistant, actions or {}, meta)


def query(session: int = 99, user: str = "hi", pid: str = "u1", meta=None) -> Example:
    return Example(pid, session, 1, meta, [Message("user", user)], "target")


def unit(*values) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def words(texts: list[str]) -> list[int]:
    """A stand-in token counter: words."""
    return [len(t.split()) for t in texts]


# --- What is retrieved ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["similarity", "recency", "hybrid"])
@pytest.mark.parametrize("cold_start", [0, 1])
def test_only_the_same_users_memory_and_never_the_own_session(tiny_dataset, method, cold_start):
    from personal.data.examples import build_examples

    splits = make_splits(tiny_dataset, cold_start=cold_start)
    memory = build_memory(tiny_dataset, splits, list(splits))
    rng = np.random.default_rng(0)
    vectors = {pid: rng.normal(size=(len(xs), 8)) for pid, xs in memory.items()}
    vectors = {pid: v / np.linalg.norm(v, axis=1, keepdims=True) for pid, v in vectors.items()}
    r = Retriever(memory, vectors, settings(k=10, method=method), words, 10_000,
                  embed_queries=lambda texts: [unit(*rng.normal(size=8)) for _ in texts])
    checked = 0
    for split in ("train", "val", "test"):
        for e in build_examples(tiny_dataset, splits, split):
            sp = splits[e.persona_id]
            memory_positions = sp.val if sp.cold_start else sp.train
            got = r.top(e)
            assert got, (split, e.persona_id)
            assert {x.persona_id for x in got} == {e.persona_id}
            assert e.session_id not in {x.session_id for x in got}
            assert {x.position for x in got} <= set(memory_positions)
            checked += 1
    assert checked == len(build_examples(tiny_dataset, splits, "train")) + \
        len(build_examples(tiny_dataset, splits, "val")) + \
        len(build_examples(tiny_dataset, splits, "test"))


def test_similarity_puts_a_near_duplicate_first():
    from personal.data.embed import embed

    memory = {"u1": [
        exchange(0, "Please set the AC to 22 degrees on heat, it is freezing.", meta=EVENING),
        exchange(1, "Put the TV on Netflix at volume 30.", meta=EVENING),
        exchange(2, "Dim the lights to 40 percent with a warm colour.", meta=EVENING),
        exchange(3, "Arm the security system for the night.", meta=EVENING)]}
    from personal.strategies.retrieval_index import memory_texts
    vectors = {"u1": embed(memory_texts(memory))}
    r = Retriever(memory, vectors, settings(k=2), words, 10_000, embed_queries=embed)
    got = r.top(query(user="Could you set the AC to 22 degrees heating? It's freezing.",
                      meta=EVENING))
    assert got[0].session_id == 0  # the oldest session: similarity, not recency, chose it


def test_recency_returns_the_latest_sessions():
    memory = {"u1": [exchange(s, turn=t) for s in range(4) for t in (1, 3)]}
    index = UserIndex(memory["u1"], None)
    got = index.top(query(session=9), settings(k=3, method="recency"))
    assert [(x.session_id, x.turn_index) for x in got] == [(3, 3), (3, 1), (2, 3)]
    # the query's own session (the latest) is skipped
    got = index.top(query(session=3), settings(k=2, method="recency"))
    assert [(x.session_id, x.turn_index) for x in got] == [(2, 3), (2, 1)]


@pytest.mark.parametrize("weight, expected", [
    (1.0, [0, 1, 2]),   # similarity only: the old exact match first
    (0.8, [0, 1, 2]),   # scores 0.8, 0.5, 0.2
    (0.5, [2, 1, 0]),   # all 0.5: ties go to the more recent
    (0.2, [2, 1, 0]),   # scores 0.8, 0.5, 0.2
    (0.0, [2, 1, 0]),   # recency only
])
def test_hybrid_interpolates_similarity_and_recency(weight, expected):
    # session 0 matches the query exactly (cos 1), session 1 half (cos 0.5), session 2 not
    xs = [exchange(0), exchange(1), exchange(2)]
    rows = np.stack([unit(1, 0), unit(0.5, np.sqrt(0.75)), unit(0, 1)])
    index = UserIndex(xs, rows)
    got = index.top(query(), settings(method="hybrid", hybrid_weight=weight), unit(1, 0))
    assert [x.session_id for x in got] == expected
    if weight == 1.0:
        sim = index.top(query(), settings(method="similarity"), unit(1, 0))
        assert [x.session_id for x in sim] == expected


# --- How it is written ----------------------------------------------------------------------

def test_raw_format_caps_each_exchange():
    xs = [exchange(0, "Heat up please.", "The AC is at 22 degrees on heat."),
          exchange(1, "x" * 100, "y" * 100)]
    text = render(xs, settings(exchange_chars=40), words, 10_000)
    assert text == ("Past exchanges with this user:\n"
                    "User: Heat up please.\n"               # 15 chars: under half of 40
                    "Assistant: The AC is at 22 degree..."  # the rest: 25 chars
                    "\nUser: " + "x" * 17 + "...\n"         # half: 20 chars
                    "Assistant: " + "y" * 17 + "...")


def test_summary_format_counts_settings_most_frequent_first():
    xs = [exchange(0, actions={"lights": {"brightness": 40}}),
          exchange(1, actions={"ac": {"temperature": 22, "mode": "heat"}}),
          exchange(2, actions={"ac": {"temperature": 22}, "security": {"armed": True}}),
          exchange(3)]
    text = render(xs, settings(format="summary"), words, 10_000)
    assert text == ("Usual settings: ac temperature 22 (2x), lights brightness 40 (1x), "
                    "ac mode heat (1x), security armed on (1x).")


def test_preferences_format_states_context_and_settings():
    xs = [exchange(0, actions={"ac": {"temperature": 22, "mode": "heat"},
                               "lights": {"brightness": 40}}, meta=EVENING),
          exchange(1),  # set nothing: no statement
          exchange(2, actions={"tv": {"input_source": "Netflix"}}, meta=None),
          exchange(3, actions={"tv": {"input_source": "Netflix"}}, meta=None)]  # a repeat
    text = render(xs, settings(format="preferences"), words, 10_000)
    assert text == ("Known preferences:\n"
                    "- When evening, weekday, after sunset, rainy, cold outside: "
                    "ac temperature 22, mode heat; lights brightness 40.\n"
                    "- When any time: tv input source Netflix.")


def test_the_block_keeps_the_best_pieces_within_the_budget():
    xs = [exchange(s, f"message {s}", f"reply {s}") for s in range(3)]
    full = render(xs, settings(), words, 10_000)
    assert words([full]) == [5 + 3 * 6]  # header, then "User: message s / Assistant: reply s"
    two = render(xs, settings(), words, 22)  # the third (worst-ranked) piece goes
    assert two == "Past exchanges with this user:\nUser: message 0\nAssistant: reply 0\n" \
                  "User: message 1\nAssistant: reply 1"
    assert render(xs, settings(), words, 10) is None  # not even one fits: no block
    assert render([], settings(format="summary"), words, 100) is None


# --- In a run (smoke world: tiny random base, 3 users) --------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    cfg = smoke_config(root, users=3, sessions=6,
                       overrides=["train.max_steps=2", "generation.max_new_tokens=6"])
    return cfg, Context.create(cfg, root / "run")


def test_the_token_counter_tokenizes_each_distinct_text_once(world):
    tokenizer = world[1].base[1]
    seen = []

    def counting(texts, **kw):
        seen.extend(texts)
        return tokenizer(texts, **kw)

    count = retrieval.token_counter(counting)
    texts = ["Dim the lights to 40.", "Past exchanges with this user:", "Dim the lights to 40."]
    truth = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert count(texts) == truth
    assert count(texts[::-1] + ["Arm the alarm."]) == truth[::-1] + [
        len(tokenizer("Arm the alarm.", add_special_tokens=False)["input_ids"])]
    assert seen == [texts[0], texts[1], "Arm the alarm."]


def test_k0_gives_no_context_and_exactly_the_unified_prompt(world):
    _, ctx = world
    r = retrieval.load_retriever(ctx, RetrievalConfig(k=0), ctx.eval_personas())
    fmt, plain = retrieval.retrieval_format(ctx, r), ctx.prompt_format()
    assert fmt.extra_context is None
    for e in ctx.examples("test")[:5]:
        assert r(e) is None
        assert fmt.prompt_ids(ctx.base[1], e, 6) == plain.prompt_ids(ctx.base[1], e, 6)


@pytest.mark.parametrize("k", [1, 10])
def test_the_prompt_carries_the_retrieved_exchange_and_fits(world, k):
    _, ctx = world
    tokenizer, room = ctx.base[1], ctx.cfg.model.max_seq_len - 6
    scfg = RetrievalConfig(k=k, method="recency", context_tokens=10_000)
    r = retrieval.load_retriever(ctx, scfg, ctx.eval_personas())
    fmt = retrieval.retrieval_format(ctx, r)
    for e in ctx.examples("test")[:4]:
        block = r(e)
        latest = r.top(e)[0]
        assert block.startswith("Past exchanges with this user:\nUser: ")
        assert r.count_tokens([block])[0] <= room // 2  # a huge budget is clamped
        assert latest.assistant[:20] in block
        ids = fmt.prompt_ids(tokenizer, e, 6)
        assert len(ids) <= room
        text = tokenizer.decode(ids)
        assert block in text
        assert e.history[-1].text in text  # the block leaves room for the latest message


def test_training_turns_never_retrieve_from_their_own_session(world, monkeypatch, tmp_path):
    cfg, _ = world
    ctx = Context.create(cfg, tmp_path / "run")
    seen = []
    top = UserIndex.top

    def spy(self, example, s, q=None):
        got = top(self, example, s, q)
        seen.append((example, got))
        return got

    monkeypatch.setattr(UserIndex, "top", spy)
    scfg = RetrievalTrainedConfig(init="base", k=3)
    result = retrieval.train_with_retrieval(ctx, scfg)
    assert result["steps"] >= 1
    assert (ctx.run.path / retrieval.TRAINED / "adapter_config.json").is_file()
    trained = {(e.persona_id, e.session_id, e.turn_index) for e in ctx.examples("train")}
    asked = {(e.persona_id, e.session_id, e.turn_index) for e, _ in seen}
    assert trained <= asked  # every training turn got its retrieval
    for e, got in seen:
        assert got and all(x.persona_id == e.persona_id for x in got)
        assert e.session_id not in {x.session_id for x in got}


def test_the_index_unit_embeds_the_evaluated_queries_once_for_both_evaluations(
        world, monkeypatch, tmp_path):
    """Both retrieval evaluations find their test queries embedded by the index unit (two
    lanes running them at once each embedded all of them)."""
    from personal.data import embed as embed_mod

    cfg, _ = world
    ctx = Context.create(cfg, tmp_path / "run")
    embed_mod._CACHE.clear()
    unit = retrieval.index_unit(ctx, "retrieval", retrieval.memory_personas(ctx, False))
    result = unit.fn()
    turns = ctx.examples(cfg.eval.split, ctx.eval_personas())
    assert result["queries"] == len(turns) > 0

    def no_more(texts, **kw):
        raise AssertionError(f"embedded again: {texts[:2]}")

    monkeypatch.setattr(embed_mod.embedding_model(), "encode", no_more)
    for trained in (False, True):
        scfg = (RetrievalTrainedConfig if trained else RetrievalConfig)(k=2)
        r = retrieval.load_retriever(ctx, scfg, retrieval.memory_personas(ctx, False))
        r.prepare(turns)
        assert all(r(e) for e in turns)


def test_bad_options_are_named():
    with pytest.raises(PersonalError, match="method must be one of similarity, recency, hybrid"):
        retrieval.check(RetrievalConfig(method="bm25"))
    with pytest.raises(PersonalError, match="k must be >= 0"):
        retrieval.check(RetrievalConfig(k=-1))
    with pytest.raises(PersonalError, match="init must be 'unified' or 'base'"):
        retrieval.check(RetrievalTrainedConfig(init="scratch"))


# --- The script -----------------------------------------------------------------------------

def script():
    path = ROOT / "scripts" / "retrieval_augmented_baseline.py"
    spec = importlib.util.spec_from_file_location("retrieval_augmented_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_trains_evaluates_and_prints_the_summary(world, tmp_path, capsys):
    cfg, ctx = world
    save_config(cfg, tmp_path / "cfg.yaml")
    rc = script().main(["--config", str(tmp_path / "cfg.yaml"), "--run", str(tmp_path / "run"),
                        "--k", "2", "--format", "summary"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["strategy"] == "retrieval"
    assert summary["examples"] == len(ctx.examples("test")) and "emb_sim" in summary["macro"]
    run = tmp_path / "run"
    assert (run / "adapters/unified_lora/adapter_config.json").is_file()
    index = json.loads((run / "units/retrieval__index.json").read_text())
    memory = build_memory(ctx.dataset, ctx.splits, ctx.eval_personas())
    assert index["result"]["exchanges"] == sum(len(xs) for xs in memory.values())
    recorded = yaml.safe_load((run / "config.yaml").read_text())["strategy"]
    assert recorded == {"retrieval": {"k": 2, "format": "summary"}}


def test_script_bad_input_exits_2(tmp_path, capsys):
    rc = script().main(["--run", str(tmp_path / "run"), "--method", "bm25"])
    assert rc == 2 and "method must be one of" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/retrieval_augmented_baseline.py"),
                           "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--no-such-flag" in proc.stderr
