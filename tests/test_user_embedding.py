"""user_embedding: the exported per-user tables answer as the trained vectors do, the vector
is used (shuffling vectors changes outputs), new users get the mean vector, mean-dropout
replaces a share of rows while training only, and bad options are refused naming them."""
import copy
import dataclasses

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from personal.distributed.smoke import smoke_config
from personal.engine import adapter_rows, build_inputs
from personal.engine.peft_io import PROMPTS_FILE
from personal.engine.prompts import RoutedModel
from personal.engine.stacked_lora import get_routing
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.strategies import user_embedding as ue
from personal.strategies.common import load_stack
from personal.strategies.registry import get_strategy, strategy_config
from personal.strategies.unified_prefix import swap_sample

EPS32 = torch.finfo(torch.float32).eps


def world(tmp_path, **options):
    cfg = smoke_config(tmp_path, users=3, sessions=6,
                       overrides=["train.epochs=20", "train.max_steps=20", "train.lr=5e-2",
                                  "train.batch_size=2", "train.patience=0",
                                  "generation.max_new_tokens=6"])
    cfg = dataclasses.replace(cfg, strategy={ue.NAME: {"lr": 0.1, "swap_turns": 8, **options}})
    ctx = Context.create(cfg, tmp_path / "run")
    train_strategy(ctx, ue.NAME)
    return ctx


@pytest.fixture(scope="module", params=["add", "soft_tokens"])
def ctx(request, tmp_path_factory):
    return world(tmp_path_factory.mktemp(request.param), injection=request.param, dim=8)


def users(ctx):
    return sorted(p.name for p in (ctx.run.path / ue.FOLDER).iterdir())


def conditioner(ctx):
    """The trained conditioner rebuilt from the saved vectors and projection."""
    scfg = strategy_config(get_strategy(ue.NAME), ctx.cfg.strategy[ue.NAME])
    state = load_file(str(ctx.run.path / ue.VECTORS / "vectors.safetensors"))
    hidden = ctx.base[0].config.hidden_size
    cond = ue.UserConditioner(state["user_vectors"].shape[0], hidden, scfg, 0)
    cond.load_state_dict(state)  # user_vectors and proj.*, as saved
    return cond.eval()


def logits(model, ctx, examples, rows):
    fmt, tok = ctx.prompt_format(), ctx.base[1]
    out = []
    for e, k in zip(examples, rows):
        x = torch.tensor([fmt.prompt_ids(tok, e, 6)])
        with torch.no_grad(), adapter_rows(model, torch.tensor([k])):
            out.append(model(**build_inputs(model, x, torch.ones_like(x))).logits[0, -1])
    return torch.stack(out)


def test_the_exported_tables_answer_as_the_trained_vectors(ctx):
    names = users(ctx)
    peft = PeftModel.from_pretrained(copy.deepcopy(ctx.base[0]),
                                     str(ctx.run.path / ue.FOLDER / names[0])).eval()
    get_routing(peft, len(names))
    peft.personal_prompts = conditioner(ctx)
    routed = RoutedModel(peft).eval()
    stack = load_stack(ctx, [ctx.run.path / ue.FOLDER / n for n in names])
    fmt, tok = ctx.prompt_format(), ctx.base[1]
    for e in ctx.examples("test")[:4]:
        k = names.index(e.persona_id)
        x = torch.tensor([fmt.prompt_ids(tok, e, 6)])
        with torch.no_grad():
            want = routed(x, torch.ones_like(x), torch.tensor([k])).logits[0, -1]
        got = logits(stack, ctx, [e], [k])[0]
        # peft's LoRA path and the stack's differ in summation order only
        hidden, layers = ctx.base[0].config.hidden_size, ctx.base[0].config.num_hidden_layers
        assert (got - want).abs().max() <= float(want.abs().max()) * hidden * EPS32 * 4 * layers


def test_shuffling_vectors_changes_outputs(ctx):
    record = ctx.run.read_json(f"diagnostics/{ue.NAME}.json")
    assert record["swap_turns"] > 0 and record["params_per_user"] == 8
    names = users(ctx)
    sample = swap_sample(ctx, names, 12)
    own = [names.index(e.persona_id) for e in sample]
    other = [(k + 1) % len(names) for k in own]
    stack = load_stack(ctx, [ctx.run.path / ue.FOLDER / n for n in names])
    moved = (logits(stack, ctx, sample, own) - logits(stack, ctx, sample, other)).abs().amax(1)
    assert bool((moved > 1e-4).all()), moved


def test_a_new_user_gets_the_mean_vector(ctx):
    cond = conditioner(ctx)
    with torch.no_grad():
        want = cond.table(cond.user_vectors.mean(0, keepdim=True))[0]
    saved = load_file(str(ctx.run.path / ue.COLD_START / PROMPTS_FILE))
    got = next(iter(saved.values()))
    assert torch.allclose(got, want, rtol=0, atol=16 * EPS32 * float(want.abs().max() + 1))
    vectors = load_file(str(ctx.run.path / ue.VECTORS / "vectors.safetensors"))
    assert vectors["user_vectors"].shape == (len(users(ctx)), 8)


def test_mean_dropout_replaces_rows_while_training_only():
    scfg = ue.UserEmbeddingConfig(dim=4, mean_dropout=0.5)
    cond = ue.UserConditioner(3, 6, scfg, seed=0)
    index = torch.tensor([0, 1, 2] * 20)
    mean = cond.user_vectors.mean(0)
    cond.train()
    v = cond.vectors_of(index)
    is_mean = torch.isclose(v, mean.expand_as(v)).all(1)
    assert 15 <= int(is_mean.sum()) <= 45  # about half of 60 rows
    assert torch.equal(v[~is_mean], cond.user_vectors[index[~is_mean]])
    cond.eval()
    assert torch.equal(cond.vectors_of(index), cond.user_vectors[index])
    assert torch.equal(cond.vectors_of(torch.tensor([-1]))[0], mean)  # a new user


@pytest.mark.parametrize("option,value,message", [
    ("dim", 0, "dim must be >= 1"), ("injection", "concat", "must be add or soft_tokens"),
    ("mean_dropout", 1.0, "mean_dropout must be in [0, 1)"),
    ("mean_pull", -0.1, "mean_pull must be >= 0")])
def test_bad_options_are_refused_naming_the_option(option, value, message):
    with pytest.raises(PersonalError, match=f"strategy.user_embedding.{option}") as err:
        strategy_config(get_strategy(ue.NAME), {option: value})
    assert message in str(err.value)
