"""constrained_lora: a residual per user on the frozen unified adapter. It starts exactly at
unified, its penalty is the residual's effective weight change, a large penalty keeps
unified's answers, distillation's teacher is unified, the residual really trains (the
frozen-adapter trap), and bad options are refused naming the option."""
import copy
import dataclasses

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from personal.config import TrainConfig

from personal.distributed.smoke import smoke_config
from personal.engine import adapter_rows, concat_peft, import_peft, inject_from_peft, merge_peft
from personal.engine.stacked_lora import inject_stacked_lora, lora_layers
from personal.engine.sampler import collate
from personal.engine.train import _State, _delta_norms, _row_losses_kd, train_stacked
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.strategies import constrained, unified
from personal.strategies.registry import get_strategy, strategy_config

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return smoke_config(tmp_path_factory.mktemp("constrained"), users=3, sessions=6,
                        overrides=["train.epochs=20", "train.max_steps=20", "train.lr=5e-2",
                                   "train.batch_size=2", "train.patience=0",
                                   "generation.max_new_tokens=6"])


def with_options(cfg, **options):
    return dataclasses.replace(cfg, strategy={"constrained_lora": {"epochs": 15, "lr": 5e-2,
                                                                   **options}})


def train(cfg, path, **options):
    ctx = Context.create(with_options(cfg, **options), path)
    train_strategy(ctx, "constrained_lora")
    return ctx


def predict(ctx, name, examples):
    spec = get_strategy(name)
    return spec.predictor(ctx, strategy_config(spec, ctx.cfg.strategy.get(name)))(examples)


@pytest.fixture(scope="module")
def plain(cfg, tmp_path_factory):
    return train(cfg, tmp_path_factory.mktemp("plain"), l2_lambda=0.0)


def logits(model, ids, rows=None):
    x = torch.tensor([ids])
    with torch.no_grad():
        if rows is None:
            return model(input_ids=x).logits[0]
        with adapter_rows(model, torch.tensor(rows)):
            return model(input_ids=x).logits[0]


def tolerance(reference: torch.Tensor, hidden: int, layers: int) -> float:
    """Merging W + sBA instead of adding sB(Ax) reorders fp32 sums of `hidden` terms per
    layer; each layer's relative error is ~hidden * eps and compounds over layers, on logits
    of the reference's magnitude."""
    return float(reference.abs().max()) * hidden * EPS32 * 4 * layers


def test_concatenated_adapter_is_exactly_the_sum_of_its_parts(tmp_path):
    g = torch.Generator().manual_seed(0)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    parts = []
    for rank, scale in ((3, 2.0), (2, 0.5)):
        parts.append(({f"{key}.lora_A.weight": torch.randn(rank, 5, generator=g),
                       f"{key}.lora_B.weight": torch.randn(4, rank, generator=g)}, scale))
    out = concat_peft(parts, tmp_path / "sum", ["q_proj"])
    w = import_peft([out])
    assert (w.rank, w.alpha) == (5, 5.0)  # scaling alpha / r = 1
    a, b = w.adapter(0)[f"{key}.lora_A.weight"], w.adapter(0)[f"{key}.lora_B.weight"]
    want = sum(s * st[f"{key}.lora_B.weight"] @ st[f"{key}.lora_A.weight"] for st, s in parts)
    # 5 products of O(1) entries summed: a few ulps of the result's magnitude
    assert torch.allclose(b @ a, want, rtol=0, atol=5 * 8 * EPS32 * float(want.abs().max()))


def test_delta_norm_is_the_squared_effective_weight_change(plain):
    model = inject_stacked_lora(copy.deepcopy(plain.base[0]), 2, rank=3, alpha=6.0, seed=0)
    for layer in lora_layers(model):
        with torch.no_grad():
            layer.lora_B.normal_(generator=torch.Generator().manual_seed(1))
    got = _delta_norms(model, torch.tensor([0, 1]))
    for k in range(2):
        # the [out, in] products, explicitly
        want = sum(float((layer.scaling * layer.lora_B[k] @ layer.lora_A[k]).pow(2).sum())
                   for layer in lora_layers(model))
        assert abs(float(got[k]) - want) <= 64 * EPS32 * want


def test_the_residual_starts_exactly_at_unified(plain):
    ctx = plain
    base, tok = ctx.base
    ids = ctx.prompt_format().prompt_ids(tok, ctx.examples("test")[0], 8)
    reference = logits(PeftModel.from_pretrained(copy.deepcopy(base),
                                                 str(ctx.run.path / unified.ADAPTER)).eval(), ids)
    merged = merge_peft(copy.deepcopy(base), ctx.run.path / unified.ADAPTER)
    zero_residual = inject_stacked_lora(merged, 2, rank=4, alpha=16.0).eval()  # B = 0
    cold = inject_from_peft(copy.deepcopy(base), [ctx.run.path / constrained.COLD_START]).eval()
    hidden, layers = base.config.hidden_size, base.config.num_hidden_layers
    tol = tolerance(reference, hidden, layers)
    assert (logits(zero_residual, ids, [1]) - reference).abs().max() <= tol
    assert (logits(cold, ids, [0]) - reference).abs().max() <= tol
    assert (reference - logits(base, ids)).abs().max() > 100 * tol  # unified moved the base


def test_the_residual_trains_and_is_exported_with_unified(plain):
    ctx = plain
    record = ctx.run.unit_result("train/constrained_lora")
    assert record["adapters"] == 3 and record["mean_steps"] > 0
    u = import_peft([ctx.run.path / unified.ADAPTER])
    scale = u.alpha / u.rank
    for user in sorted(p.name for p in (ctx.run.path / constrained.FOLDER).iterdir()):
        w = load_file(str(ctx.run.path / constrained.FOLDER / user / "adapter_model.safetensors"))
        for key, t in u.adapter(0).items():
            mine = w[key]
            if ".lora_A." in key:
                assert torch.equal(mine[:u.rank], t)           # unified's A, untouched
            else:
                assert torch.allclose(mine[:, :u.rank], t * scale, rtol=EPS32, atol=0)
        moved = [w[k][:, u.rank:].abs().max() for k in w if ".lora_B." in k]
        assert max(moved) > 0, f"{user}: the residual never moved (a frozen adapter?)"


def test_a_large_penalty_keeps_unified_and_the_norm_falls_with_lambda(cfg, plain, tmp_path):
    held = train(cfg, tmp_path / "held", l2_lambda=1e4)
    examples = held.examples("test")
    assert predict(held, "constrained_lora", examples) == predict(held, "unified_lora", examples)

    def residual_norm(ctx):
        rank = import_peft([ctx.run.path / unified.ADAPTER]).rank
        total = 0.0
        for folder in sorted((ctx.run.path / constrained.FOLDER).iterdir()):
            w = load_file(str(folder / "adapter_model.safetensors"))
            for k in w:
                if ".lora_B." in k:
                    b = w[k][:, rank:]
                    a = w[k.replace(".lora_B.", ".lora_A.")][rank:]
                    total += float((b @ a).pow(2).sum())
        return total

    free = residual_norm(plain)
    assert free > 0 and residual_norm(held) < free / 100


def test_distillation_term_is_the_kl_to_unified_and_zero_at_the_start(plain):
    ctx = plain
    base, tok = ctx.base
    fmt = ctx.prompt_format()
    data = fmt.encode_training(tok, ctx.examples("train")[:4], False)
    model = inject_stacked_lora(merge_peft(copy.deepcopy(base), ctx.run.path / unified.ADAPTER),
                                1, rank=2, alpha=4.0, seed=0)
    t = 2.0
    result = train_stacked(model, [data], TrainConfig(lr=5e-2, epochs=3, batch_size=2,
                                                       warmup_frac=0.0),
                           kd_weight=1.0, kd_temperature=t, pad_token_id=tok.eos_token_id)
    kd = [v for _, v in result.adapters[0].term_losses["kd"]]
    assert kd[0] <= 1e-5 and max(kd) > 1e-3  # student = teacher at B = 0, then it departs

    # the term against a hand computation: KL(unified || student) at T, times T^2
    ex = data[0]
    ids = torch.tensor([ex["input_ids"]])
    labels = torch.tensor(ex["labels"])[1:]
    sel = labels != -100
    model.eval()
    student = logits(model, ex["input_ids"], [0])[:-1][sel]
    teacher = logits(model, ex["input_ids"], [-1])[:-1][sel]
    ref = PeftModel.from_pretrained(copy.deepcopy(base), str(ctx.run.path / unified.ADAPTER))
    assert torch.allclose(teacher, logits(ref.eval(), ex["input_ids"])[:-1][sel],
                          rtol=0, atol=tolerance(teacher, base.config.hidden_size,
                                                 base.config.num_hidden_layers))
    p = torch.softmax(teacher / t, -1)
    want = float((p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t)
    st = _State.__new__(_State)
    st.model, st.kd_weight, st.kd_temperature = model, 1.0, t
    batch = collate([(0, ex)], tok.eos_token_id, ids.device)
    _, _, kd_sums = _row_losses_kd(st, batch, torch.tensor([1.0]))
    # both sides sum the vocabulary's terms in fp32 (its size times eps, relative)
    vocab = teacher.shape[-1]
    assert abs(float(kd_sums[0]) / int(sel.sum()) - want) <= vocab * EPS32 * 4 * max(want, 1e-3)


@pytest.mark.parametrize("option,value", [("rank", 0), ("l2_lambda", -0.1),
                                          ("kd_weight", -1.0), ("kd_temperature", 0.0)])
def test_bad_options_are_refused_naming_the_option(option, value):
    spec = get_strategy("constrained_lora")
    with pytest.raises(PersonalError, match=f"strategy.constrained_lora.{option}"):
        strategy_config(spec, {option: value})  # at config time, before any work
