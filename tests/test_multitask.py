"""multitask_lora: auxiliary heads on the hidden state at the user's turn. Their labels are
the turn's settings (hand-checked), one per target segment in order; their gradients reach
the LoRA; they are absent from the exported peft folder; their train and validation accuracy
is recorded; bad options are refused naming the option."""
import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from personal.distributed.smoke import smoke_config
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.models.lora import attach_lora
from personal.models.training import collate
from personal.strategies import multitask as mt
from personal.strategies.registry import get_strategy, strategy_config


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("multitask")
    cfg = smoke_config(root, users=3, sessions=6,
                       overrides=["train.epochs=20", "train.max_steps=20", "train.lr=5e-2",
                                  "train.batch_size=2", "train.patience=0"])
    ctx = Context.create(dataclasses.replace(cfg, strategy={}), root / "run")
    train_strategy(ctx, mt.NAME)
    return ctx


def test_turn_labels_by_hand():
    rec = mt.turn_labels({"ac": {"temperature": 23, "mode": "cool"}, "lights": {"color": "warm"}})
    assert rec["devices"] == [0.0, 1.0, 1.0, 0.0, 0.0]  # tv, ac, lights, speaker, security
    j = [(d, p) for d, p, _ in mt.NUMERIC].index(("ac", "temperature"))
    assert rec["values"][j] == pytest.approx((23 - 16) / (30 - 16)) and rec["mask"][j] == 1.0
    assert sum(rec["mask"]) == 1.0  # mode and color are not numeric


def test_one_label_per_target_segment_in_order(ctx):
    pid = ctx.training_personas()[0]
    exs = ctx.examples("train", [pid])
    fmt, tok = ctx.prompt_format(), ctx.base[1]
    feats = mt.label_features(fmt.encode_training(tok, exs, True), exs, 0, True, tok)
    records = [rec for f in feats for rec in f["aux"]]
    assert len(records) == len(exs)
    assert records == [mt.turn_labels(e.actions) for e in exs]


def test_the_heads_gradients_reach_the_lora(ctx):
    scfg = mt.MultitaskConfig()
    model = attach_lora(ctx.base[0], ctx.cfg.lora)
    model.personal_heads = mt.Heads(ctx.base[0].config.hidden_size, 3)
    names = sorted(ctx.training_personas())
    feats = mt.encoded(ctx, "train", names, True, True)[:4]
    batch = collate(feats, 0)
    loss = mt.aux_term(scfg).fn(model, batch)[0]
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and max(float(g.abs().max()) for g in grads if g is not None) > 0


def test_the_heads_are_absent_from_the_export_and_their_accuracy_is_recorded(ctx):
    weights = load_file(str(ctx.run.path / mt.ADAPTER / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert not any("heads" in k for k in weights)
    record = ctx.run.read_json(mt.DIAGNOSTICS)
    assert record["labels"] == "gold actions"  # the simulator writes each turn's actions
    for split in ("train", "val"):
        acc = record["accuracy"][split]
        assert acc["turns"] > 0 and 0 <= acc["persona_accuracy"] <= 1
        assert 0 <= acc["device_accuracy"] <= 1 and acc["param_mae"] >= 0
    assert [r["check"] for r in record["rows"]] == ["persona head accuracy",
                                                    "device head exact match",
                                                    "parameter head MAE"]


@pytest.mark.parametrize("option,value,message", [
    ("w_persona", -0.1, "w_persona must be >= 0"), ("w_param", -1.0, "w_param must be >= 0"),
    ("heads", "persona,mood", "unknown head 'mood'")])
def test_bad_options_are_refused_naming_the_option(option, value, message):
    with pytest.raises(PersonalError, match=f"strategy.multitask_lora.{option}") as err:
        strategy_config(get_strategy(mt.NAME), {option: value})
    assert message in str(err.value)


def test_segment_starts_by_hand():
    labels = torch.tensor([[-100, -100, 5, 6, -100, 7, -100]])
    assert mt.segment_starts(labels) == [(0, 1), (0, 4)]
