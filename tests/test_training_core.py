"""The one training core: every path trains the same way.

- one adapter in the engine's stack (`train_stacked`) equals `train_lora`: same batches,
  schedule, per-step losses, validation checks and weights (up to float summation order);
- the DeepSpeed stepper (here with a fake engine: deepspeed needs CUDA) gives exactly the
  default path's losses, validation checks, early stopping and best weights;
- loss terms are logged one by one, a weight-0 term changes nothing, the L2 term's gradient
  is 2 * lambda * (theta - ref); a parameter group at lr 0 does not move; `min_steps`.
"""
import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict

from conftest import tiny_lm
from personal.config import LoraConfig, TrainConfig
from personal.data.schema import Example, Message
from personal.distributed.deepspeed import deepspeed_stepper, read_zero_config
from personal.engine import (adapter_batches, adapter_state, inject_stacked_lora,
                             load_adapter_state, train_stacked)
from personal.errors import PersonalError
from personal.models.chat import PromptFormat
from personal.models.core import (PARITY_RTOL, auxiliary_term, default_group, kl_to_teacher,
                                  l2_to_reference, lr_factor, param_groups,
                                  relative_difference, trainable_state)
from personal.models.lora import pad_id, prepare_training, train_lora, train_settings
from personal.models.training import LoopSettings, lm_term, total_steps, train_loop

ZERO = Path(__file__).resolve().parents[1] / "configs" / "deepspeed_zero2.json"
SENTENCES = ["Set the lights to 40 percent please.", "Could you warm the room up?",
             "Turn the TV to Netflix.", "Arm the security system.", "Music in the kitchen."]
REPLIES = ["I've set the lights to 40% with a warm color.", "The AC is now on heat at 23.",
           "Done, the TV is on Netflix at volume 20.", "The security system is armed.",
           "The kitchen speaker plays jazz at volume 15."]
FMT = PromptFormat(max_len=256, history_messages=6)
LORA = dataclasses.replace(LoraConfig(), rank=4, alpha=8.0, dropout=0.0)


@pytest.fixture(scope="module")
def world():
    return tiny_lm(SENTENCES + REPLIES)


def examples(n, offset=0):
    """One-turn sessions of different lengths (some with a second turn)."""
    out = []
    for i in range(offset, offset + n):
        msgs = [Message("user", SENTENCES[i % 5])]
        if i % 3 == 0:
            msgs = [Message("user", SENTENCES[(i + 1) % 5]),
                    Message("assistant", REPLIES[(i + 1) % 5])] + msgs
        out.append(Example(f"persona_{i % 2}", i, len(msgs), None, msgs, REPLIES[i % 5]))
    return out


def cfg(**changes):
    base = dataclasses.replace(TrainConfig(), lr=2e-2, epochs=3, batch_size=3, warmup_frac=0.2,
                               weight_decay=0.01, max_grad_norm=0.5, eval_every=2, patience=0,
                               max_val_examples=0, seed=5)
    return dataclasses.replace(base, **changes)


def _features(world, tc):
    base, tok = world
    adapted, train, val = prepare_training(base, tok, examples(10), examples(4, 20), LORA, tc,
                                           FMT)
    return adapted, train, val


# --- One adapter in the engine == train_lora ------------------------------------------------

def _stack_like(base, init):
    stack = inject_stacked_lora(copy.deepcopy(base), 1, LORA.rank, LORA.alpha, 0.0,
                                list(LORA.target_modules), seed=0)
    load_adapter_state(stack, 0, init)
    return stack


def test_one_adapter_in_the_engine_equals_train_lora(world):
    base, tok = world
    tc = cfg()
    adapted, train, val = _features(world, tc)  # the features and init train_lora uses
    init = {k: v.clone() for k, v in get_peft_model_state_dict(adapted).items()}
    ref = train_lora(base, tok, examples(10), examples(4, 20), LORA, tc, progress=False,
                     fmt=FMT)
    stack = _stack_like(base, init)
    assert relative_difference(adapter_state(stack, 0), init) == 0  # the same start
    run = train_stacked(stack, [train], tc, val_datasets=[val], adapter_seeds=[tc.seed],
                        pad_token_id=pad_id(tok), check_start=True).adapters[0]
    # Same plan and schedule: the same steps, the same validation checks.
    assert run.steps == ref.steps == total_steps(len(train), train_settings(tc)) == 12
    assert [s for s, _ in run.val_losses] == [s for s, _ in ref.val_losses]
    # Per-step losses: the engine right-pads and splits a step into passes, train_lora
    # left-pads; the same sums in another order. A loss differs by the weights' difference
    # (<= PARITY_RTOL of the update, whose whole effect on the loss is its drop) plus its own
    # reassociation (~sqrt(n) * 2^-24 relative, n <= 1e3 tokens: < 1e-5).
    losses = [v for _, v in ref.train_losses]
    drop = max(losses) - min(losses)
    for a, b in zip(run.train_losses, losses):
        assert a == pytest.approx(b, abs=PARITY_RTOL * drop + 1e-5 * abs(b))
    for (_, a), (_, b) in zip(run.val_losses, ref.val_losses):
        assert a == pytest.approx(b, abs=PARITY_RTOL * drop + 1e-5 * abs(b))
    assert run.best_step == ref.best_step
    trained = {k: v for k, v in get_peft_model_state_dict(ref.model).items()}
    rel = relative_difference(adapter_state(stack, 0), trained, init)
    assert rel <= PARITY_RTOL, rel  # 5e-7 measured on an AMD EPYC
    assert relative_difference(trained, init) > 1e-2  # it trained


def test_engine_and_loop_draw_the_same_batches():
    lengths = [5, 9, 3, 12, 7, 7, 4, 10]
    from personal.models.training import batch_plan

    plan = adapter_batches(len(lengths), 3, 2.0, 0, 4, lengths=lengths)
    assert plan == batch_plan(lengths, 3, len(plan), 4) and len(plan) == 6


# --- The DeepSpeed stepper ------------------------------------------------------------------

class FakeEngine:
    """What the loop needs of a DeepSpeed engine: backward(loss) and step(), which clips
    (`gradient_clipping`), steps the optimiser and the schedule it was handed."""

    def __init__(self, model, optimizer, config, lr_scheduler):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.clip = optimizer, config["gradient_clipping"]
        self.lr_scheduler = lr_scheduler(optimizer)
        self.calls = {"backward": 0, "step": 0}

    def backward(self, loss):
        self.calls["backward"] += 1
        loss.backward()

    def step(self):
        self.calls["step"] += 1
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step(), self.lr_scheduler.step(), self.optimizer.zero_grad()


def test_deepspeed_stepper_trains_as_the_default_path(world):
    base, tok = world
    # A large lr wrecks the validation loss: early stopping and best-weight restoring act.
    tc = cfg(lr=0.5, epochs=4, eval_every=1, patience=2, max_grad_norm=5.0)
    engines = []

    def initialize(model, optimizer, config, lr_scheduler):
        engines.append(FakeEngine(model, optimizer, config, lr_scheduler))
        return engines[-1], optimizer, None, engines[-1].lr_scheduler

    runs = []
    for stepper in (None, deepspeed_stepper(read_zero_config(ZERO, tc, 1), initialize)):
        adapted, train, val = _features(world, tc)
        extra = {"stepper": stepper} if stepper else {}
        res = train_loop(adapted, train, val, train_settings(tc), pad_id(tok), progress=False,
                         **extra)
        runs.append((res, trainable_state(adapted)))
    (ref, ref_w), (ds, ds_w) = runs
    assert engines and engines[0].calls == {"backward": ds.steps, "step": ds.steps}
    # The same arithmetic in the same order: equal, not close.
    assert ds.train_losses == ref.train_losses and ds.val_losses == ref.val_losses
    assert ref.stopped_early and ds.stopped_early and ds.best_step == ref.best_step
    assert ds.steps == ref.best_step + tc.patience < total_steps(len(train), train_settings(tc))
    assert all(torch.equal(ds_w[k], ref_w[k]) for k in ref_w)


# --- Loss terms -----------------------------------------------------------------------------

def _loop(world, tc, **kwargs):
    adapted, train, val = _features(world, tc)
    init = trainable_state(adapted)
    res = train_loop(adapted, train, val, train_settings(tc), pad_id(world[1]), progress=False,
                     **kwargs)
    return res, init, trainable_state(adapted)


def test_every_term_is_logged_and_summed_with_its_weight(world):
    tc = cfg(epochs=1)
    ref = {n: torch.zeros_like(p) for n, p in _features(world, tc)[0].named_parameters()
           if "lora_B" in n}
    aux = auxiliary_term("aux", 0.5, lambda model, batch: batch["attention_mask"].float().mean())
    res, _, _ = _loop(world, tc, terms=[lm_term(), l2_to_reference(ref, 0.1), aux])
    assert set(res.term_losses) == {"lm", "l2_to_reference", "aux"}
    for name, values in res.term_losses.items():
        assert [s for s, _ in values] == list(range(1, res.steps + 1)), name
    lm, l2, ax = (dict(res.term_losses[n]) for n in ("lm", "l2_to_reference", "aux"))
    assert l2[1] == 0.0 and l2[res.steps] > 0  # B starts at the reference, then leaves it
    for step, total in res.train_losses:
        # the same Python doubles summed in another association: ~1e-16 relative
        assert total == pytest.approx(lm[step] + 0.1 * l2[step] + 0.5 * ax[step], rel=1e-12)


def test_a_weight_zero_term_changes_nothing(world):
    tc = cfg(epochs=1)
    plain, _, w_plain = _loop(world, tc)
    teacher = copy.deepcopy(world[0])

    def teacher_logits(batch):
        return teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits

    kd, _, w_kd = _loop(world, tc, terms=[lm_term(), kl_to_teacher(teacher_logits, 2.0, 0.0)])
    assert kd.train_losses == plain.train_losses and kd.val_losses == plain.val_losses
    assert all(torch.equal(w_kd[k], w_plain[k]) for k in w_plain)
    kl = [v for _, v in kd.term_losses["kl_to_teacher"]]
    assert len(kl) == kd.steps and kl[-1] > kl[0]  # measured all the same: B leaves 0


def test_kl_to_its_own_logits_is_zero(world):
    base, tok = world
    adapted, train, _ = _features(world, cfg())
    from personal.models.training import collate

    batch = collate(train[:3], pad_id(tok))
    with torch.no_grad():
        same = adapted(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
    value, count = kl_to_teacher(lambda b: same, 3.0).fn(adapted, batch)
    assert count == int((batch["labels"][:, 1:] != -100).sum()) > 0
    # the same model on the same batch: logits equal up to kernel order (~1e-6 relative),
    # and a KL is second order in the difference, so far below 1e-4 per token
    assert float(value) == pytest.approx(0.0, abs=1e-4 * count)


def test_the_l2_terms_gradient_is_2_lambda_theta_minus_ref():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    ref = {"0.weight": torch.randn(4, 3), "1.bias": torch.randn(2)}
    lam = 0.37
    term = l2_to_reference(ref, lam)
    value, count = term.fn(model, {})
    (term.weight * value / count).backward()
    params = dict(model.named_parameters())
    for name, r in ref.items():
        by_hand = 2 * lam * (params[name].detach() - r)
        assert torch.allclose(params[name].grad, by_hand, rtol=1e-6, atol=1e-7), name
    assert params["0.bias"].grad is None and params["1.weight"].grad is None
    with pytest.raises(PersonalError, match="no parameter 'missing'"):
        l2_to_reference({"missing": torch.zeros(1)}, 1.0).fn(model, {})


# --- Parameter groups -----------------------------------------------------------------------

def _a_or_b(name):
    return "A" if "lora_A" in name else "B"


def test_a_group_at_lr_zero_does_not_move(world):
    tc = cfg(epochs=1)
    adapted, train, val = _features(world, tc)
    init = trainable_state(adapted)
    s = dataclasses.replace(train_settings(tc), group_lrs={"A": 0.0})
    train_loop(adapted, train, val, s, pad_id(world[1]), progress=False, group_of=_a_or_b)
    after = trainable_state(adapted)
    assert all(torch.equal(after[k], init[k]) for k in init if "lora_A" in k)
    assert all(not torch.equal(after[k], init[k]) for k in init if "lora_B" in k)


def test_a_group_at_scale_zero_does_not_move_in_the_engine(world):
    base, tok = world
    tc = cfg(epochs=1)
    _, train, _ = _features(world, tc)
    stack = inject_stacked_lora(copy.deepcopy(base), 2, 4, 8.0, 0.0, list(LORA.target_modules))
    init = [adapter_state(stack, k) for k in range(2)]
    train_stacked(stack, [train, train], tc, pad_token_id=pad_id(tok),
                  group_lr_scale={"A": 0.0}, group_of=_a_or_b)
    for k in range(2):
        after = adapter_state(stack, k)
        assert all(torch.equal(after[n], init[k][n]) for n in after if "lora_A" in n)
        assert all(not torch.equal(after[n], init[k][n]) for n in after if "lora_B" in n)


def test_groups_by_name_and_unknown_groups_fail():
    assert [default_group(n) for n in (
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "prompts.prefix",
        "prompts.user_vector", "router.weight", "lm_head.weight", "model.norm.weight")] == [
        "lora", "prompt", "user_vector", "router", "head", "other"]
    model = torch.nn.Linear(2, 2)
    assert len(param_groups(model, 1e-3)) == 1
    with pytest.raises(PersonalError, match="'lora', a group with no trainable parameters"):
        param_groups(model, 1e-3, {"lora": 1e-4})


# --- Schedule and step budget ---------------------------------------------------------------

def test_one_schedule_and_min_steps():
    assert [lr_factor(k, 10, 2) for k in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 0.125]
    s = LoopSettings(lr=1e-3, epochs=1, batch_size=4, warmup_frac=0.1, weight_decay=0.0,
                     max_grad_norm=1.0, seed=0)
    assert total_steps(10, s) == 3
    assert total_steps(10, dataclasses.replace(s, min_steps=20)) == 20
    assert total_steps(10, dataclasses.replace(s, min_steps=20, max_steps=12)) == 12
    assert len(adapter_batches(10, 4, 1.0, 0, 0, min_steps=20)) == 20
    assert len(adapter_batches(10, 4, 1.0, 12, 0, min_steps=20)) == 12
    assert train_settings(TrainConfig(min_steps=7)).min_steps == 7
