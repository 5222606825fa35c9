"""unified_prefix: per-user soft prompts on the frozen unified adapter. The prompt is used
(swapping two users' prompts changes outputs; identical prompts change nothing, so the
check can fail), the LoRA stays unified's, a new user gets the mean prompt, another run's
unified adapter can be given by path, and bad options are refused naming the option."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from personal.distributed.smoke import smoke_config
from personal.engine import adapter_rows, build_inputs
from personal.engine.peft_io import PROMPTS_FILE, WEIGHTS_FILE
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.strategies import unified, unified_prefix as up
from personal.strategies.common import load_stack
from personal.strategies.registry import get_strategy, strategy_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    base = smoke_config(tmp_path_factory.mktemp("uprefix"), users=3, sessions=6,
                        overrides=["train.epochs=20", "train.max_steps=20", "train.lr=5e-2",
                                   "train.batch_size=2", "train.patience=0",
                                   "generation.max_new_tokens=6"])
    return dataclasses.replace(base, strategy={up.NAME: {"epochs": 15, "lr": 0.1,
                                                         "prefix_len": 4}})


@pytest.fixture(scope="module")
def ctx(cfg, tmp_path_factory):
    ctx = Context.create(cfg, tmp_path_factory.mktemp("run"))
    train_strategy(ctx, up.NAME)
    return ctx


def users(ctx):
    return sorted(p.name for p in (ctx.run.path / up.FOLDER).iterdir())


def test_the_lora_stays_unified_and_the_prompts_train(ctx):
    uni = load_file(str(ctx.run.path / unified.ADAPTER / WEIGHTS_FILE))
    prompts = []
    for user in users(ctx):
        folder = ctx.run.path / up.FOLDER / user
        lora = load_file(str(folder / WEIGHTS_FILE))
        assert lora.keys() == uni.keys() and all(torch.equal(lora[k], uni[k]) for k in uni)
        prompts.append(load_file(str(folder / PROMPTS_FILE))["prompts.prefix"])
    assert prompts[0].shape == (4, ctx.base[0].config.hidden_size)
    assert not torch.equal(prompts[0], prompts[1])


def test_a_new_user_gets_the_mean_prompt(ctx):
    prompts = [load_file(str(ctx.run.path / up.FOLDER / u / PROMPTS_FILE))["prompts.prefix"]
               for u in users(ctx)]
    mean = load_file(str(ctx.run.path / up.COLD_START / PROMPTS_FILE))["prompts.prefix"]
    assert torch.allclose(mean, sum(prompts) / len(prompts), rtol=0,
                          atol=4 * torch.finfo(torch.float32).eps * float(mean.abs().max()))


def next_token_logits(model, ctx, examples, rows):
    fmt, tok = ctx.prompt_format(), ctx.base[1]
    out = []
    for e, k in zip(examples, rows):
        x = torch.tensor([fmt.prompt_ids(tok, e, ctx.cfg.generation.max_new_tokens)])
        with torch.no_grad(), adapter_rows(model, torch.tensor([k])):
            out.append(model(**build_inputs(model, x, torch.ones_like(x))).logits[0, -1])
    return torch.stack(out)


def test_swapping_prompts_changes_outputs_and_identical_prompts_do_not(ctx, tmp_path):
    """The random smoke base answers every prompt with the same degenerate text, so here the
    output compared is the next-token distribution (the report's check compares texts, on
    the run's real base)."""
    record = ctx.run.read_json(up.DIAGNOSTICS)
    assert record["swap_turns"] > 0 and 0.0 <= record["changed_share"] <= 1.0
    names = users(ctx)
    examples = up.swap_sample(ctx, names, 16)
    own = [names.index(e.persona_id) for e in examples]
    other = [(k + 1) % len(names) for k in own]
    model = load_stack(ctx, [ctx.run.path / up.FOLDER / n for n in names])
    moved = (next_token_logits(model, ctx, examples, own)
             - next_token_logits(model, ctx, examples, other)).abs().amax(1)
    assert bool((moved > 1e-3).all()), moved  # every turn's distribution changes

    # the check can fail: give every user the first user's prompt, and nothing changes
    first = load_file(str(ctx.run.path / up.FOLDER / names[0] / PROMPTS_FILE))
    same = []
    for n in names:
        folder = tmp_path / n
        folder.mkdir()
        for f in ("adapter_config.json", WEIGHTS_FILE):
            (folder / f).write_bytes((ctx.run.path / up.FOLDER / n / f).read_bytes())
        save_file(first, str(folder / PROMPTS_FILE))
        same.append(folder)
    model = load_stack(ctx, same)
    assert torch.equal(next_token_logits(model, ctx, examples, own),
                       next_token_logits(model, ctx, examples, other))


def test_the_check_is_a_row_of_the_report(ctx):
    from personal.experiment.pipeline import evaluate_strategy, trained_hash
    from personal.experiment.reporting import SWAP_PLOT, report_from_run

    evaluate_strategy(ctx, up.NAME, trained_hash(ctx, up.NAME))
    text = report_from_run(ctx.run.path).read_text(encoding="utf-8")
    share = ctx.run.read_json(up.DIAGNOSTICS)["changed_share"]
    assert "Strategy checks" in text and f"{share:.1%} changed" in text
    assert SWAP_PLOT in text  # and the figure the issue asks for


def test_prompts_fit_on_another_runs_unified_adapter(cfg, ctx, tmp_path):
    given = ctx.run.path / unified.ADAPTER
    other = dataclasses.replace(cfg, strategy={up.NAME: {**cfg.strategy[up.NAME],
                                                         "unified_path": str(given),
                                                         "swap_turns": 0}})
    second = Context.create(other, tmp_path / "second")
    train_strategy(second, up.NAME)
    assert not (second.run.path / unified.ADAPTER).exists()  # none trained here
    uni = load_file(str(given / WEIGHTS_FILE))
    lora = load_file(str(second.run.path / up.FOLDER / users(second)[0] / WEIGHTS_FILE))
    assert all(torch.equal(lora[k], uni[k]) for k in uni)


@pytest.mark.parametrize("option,value,message", [
    ("prefix_len", 0, "prefix_len must be >= 1"),
    ("swap_turns", -1, "swap_turns must be >= 0"),
    ("unified_path", "/nonexistent/folder", "not a peft adapter folder"),
    ("form", "both", "must be frozen or joint")])
def test_bad_options_are_refused_naming_the_option(option, value, message):
    with pytest.raises(PersonalError, match=f"strategy.unified_prefix.{option}") as err:
        strategy_config(get_strategy(up.NAME), {option: value})
    assert message in str(err.value)


def test_the_study_script_refuses_a_folder_that_is_not_peft(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_prefix_on_unified.py"),
                        "--prefix_length", "20", "--unified_lora_path", str(tmp_path),
                        "--run", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and "not a peft adapter folder" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_the_joint_form_trains_one_lora_and_every_prompt_together(cfg, tmp_path):
    options = {**cfg.strategy[up.NAME], "form": "joint", "swap_turns": 8}
    joint_cfg = dataclasses.replace(cfg, strategy={up.NAME: options})
    ctx = Context.create(joint_cfg, tmp_path / "joint")
    train_strategy(ctx, up.NAME)
    assert not (ctx.run.path / unified.ADAPTER).exists()  # no separate unified adapter
    names = users(ctx)
    loras = [load_file(str(ctx.run.path / up.FOLDER / n / WEIGHTS_FILE)) for n in names]
    assert all(torch.equal(lo[k], loras[0][k]) for lo in loras for k in lo)  # one shared LoRA
    assert max(float(t.abs().max()) for k, t in loras[0].items() if "lora_B" in k) > 0
    prompts = [load_file(str(ctx.run.path / up.FOLDER / n / PROMPTS_FILE))["prompts.prefix"]
               for n in names]
    assert not torch.equal(prompts[0], prompts[1])
    examples = ctx.examples("test")[:6]
    spec = get_strategy(up.NAME)
    before = spec.predictor(ctx, strategy_config(spec, options))(examples)
    reloaded = Context.create(joint_cfg, ctx.run.path)
    assert spec.predictor(reloaded, strategy_config(spec, options))(examples) == before
    model = load_stack(ctx, [ctx.run.path / up.FOLDER / n for n in names])
    sample = up.swap_sample(ctx, names, 8)
    own = [names.index(e.persona_id) for e in sample]
    other = [(k + 1) % len(names) for k in own]
    moved = (next_token_logits(model, ctx, sample, own)
             - next_token_logits(model, ctx, sample, other)).abs().amax(1)
    assert bool((moved > 1e-3).all())
