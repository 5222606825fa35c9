"""Engine training: K adapters together == each alone (engine K=1 and plain peft + AdamW),
per-adapter clipping / lr / step counts, early stopping, init_from and the L2 pull."""
import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from personal.config import TrainConfig
from personal.engine import (adapter_batches, adapter_state, inject_stacked_lora, train_stacked,
                             validation_losses)
from personal.engine.sampler import collate, pack_rows
from personal.engine.toy import random_examples, tiny_llama
from personal.errors import PersonalError
from personal.models.core import PARITY_RTOL, relative_difference, schedule

RANK, ALPHA = 4, 8.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
SIZES, LRS = [5, 8, 11], [2e-2, 5e-3, 1e-2]
CFG = TrainConfig(lr=1e-2, epochs=2, batch_size=2, warmup_frac=0.2, weight_decay=0.01,
                  max_grad_norm=0.05, eval_every=0, patience=0, seed=3)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _datasets():
    return [random_examples(n, seed=10 + k) for k, n in enumerate(SIZES)]


def _stack(k_adapters, seed):
    return inject_stacked_lora(tiny_llama(0), k_adapters, RANK, ALPHA, 0.0, TARGETS, seed=seed)


def _max_diff(a, b):
    return max((a[key] - b[key]).abs().max().item() for key in a)


def _close(a, b, init):
    """Same training up to float reassociation (different padding widths and batch shapes
    change the summation order of matmuls): the trained updates differ by at most
    PARITY_RTOL of their norm (the bound is derived in `models.core`)."""
    return relative_difference(a, b, init) <= PARITY_RTOL


def _peft_alone(examples, lr, seed, init_state):
    """Reference: plain peft LoRA + torch AdamW + the core's schedule + clip_grad_norm_."""
    pm = get_peft_model(tiny_llama(0), LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                  target_modules=TARGETS))
    set_peft_model_state_dict(pm, init_state)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=CFG.weight_decay)
    batches = adapter_batches(len(examples), CFG.batch_size, CFG.epochs, CFG.max_steps, seed,
                              lengths=[len(ex["input_ids"]) for ex in examples])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, schedule(len(batches), CFG.warmup_frac))  # the core's one schedule
    pm.train()
    for batch in batches:
        t = collate([(0, examples[i]) for i in batch], 0, "cpu")
        loss = pm(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                  labels=t["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CFG.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
    return {key: v.detach() for key, v in get_peft_model_state_dict(pm).items()}


def test_k_adapters_together_equal_each_trained_alone():
    data = _datasets()
    together = _stack(3, seed=CFG.seed)
    init = [adapter_state(together, k) for k in range(3)]
    result = train_stacked(together, data, CFG, lrs=LRS)
    # Different dataset sizes -> different step counts: 3, 4, 6 batches per epoch, 2 epochs.
    assert [a.steps for a in result.adapters] == [6, 8, 12]
    # It learned: the second epoch (the same examples again) has a lower mean loss than the
    # first (single batches are too noisy to compare: batches are length-bucketed).
    for a in result.adapters:
        half = len(a.train_losses) // 2
        assert sum(a.train_losses[half:]) < sum(a.train_losses[:half])
    for k in range(3):
        final = adapter_state(together, k)
        assert _max_diff(final, init[k]) > 1e-3                    # it really trained
        alone = _stack(1, seed=CFG.seed + k)                        # same init by seed
        assert _max_diff(adapter_state(alone, 0), init[k]) == 0
        train_stacked(alone, [data[k]], CFG, lrs=[LRS[k]], adapter_seeds=[CFG.seed + k])
        assert _close(final, adapter_state(alone, 0), init[k])
        ref = _peft_alone(data[k], LRS[k], CFG.seed + k, init[k])
        assert _close(final, ref, init[k]), relative_difference(final, ref, init[k])


def test_clipping_is_per_adapter():
    """Scaling one adapter's loss scale (via its lr being huge) must not change another's
    update: clip norms are never shared across adapters."""
    data = _datasets()
    base = _stack(3, seed=1)
    init = [adapter_state(base, k) for k in range(3)]
    train_stacked(base, data, CFG, lrs=LRS)
    other = _stack(3, seed=1)
    train_stacked(other, data, CFG, lrs=[LRS[0], LRS[1], 1.0])     # adapter 2 goes wild
    for k in (0, 1):
        assert _close(adapter_state(base, k), adapter_state(other, k), init[k])
    assert _max_diff(adapter_state(base, 2), adapter_state(other, 2)) > 1e-2


def test_early_stopping_stops_one_adapter_and_keeps_its_best_weights():
    train = [random_examples(6, seed=20 + k) for k in range(3)]
    # Adapter 0's validation targets contradict its training targets: its val loss rises.
    val = [[{"input_ids": ex["input_ids"], "labels": [-100] * 3 + [5] * (len(ex["labels"]) - 3)}
            for ex in train[0]], train[1], train[2]]
    train[0] = [{"input_ids": ex["input_ids"][:3] + [7] * (len(ex["input_ids"]) - 3),
                 "labels": [-100] * 3 + [7] * (len(ex["labels"]) - 3)} for ex in train[0]]
    cfg = TrainConfig(lr=3e-2, epochs=4, batch_size=2, warmup_frac=0.0, max_grad_norm=1.0,
                      eval_every=1, patience=2, seed=0)
    model = _stack(3, seed=0)
    init = adapter_state(model, 0)
    lrs = [3e-2, 1e-2, 1e-2]
    result = train_stacked(model, train, cfg, val_datasets=val, lrs=lrs)
    a0, a1, a2 = result.adapters
    assert a0.stopped_early and a0.steps < a0.total_steps
    assert a0.steps == a0.best_step + cfg.patience                 # stopped `patience` evals on
    assert not a1.stopped_early and a1.steps == a1.total_steps == 12
    assert not a2.stopped_early and a2.steps == 12
    assert a1.val_losses[-1][1] < a1.val_losses[0][1]
    # Best weights kept: the val loss of the final weights is the best one seen.
    now = validation_losses(model, val, [0, 1, 2])
    for k, run in enumerate(result.adapters):
        assert now[k] == pytest.approx(run.best_val_loss, rel=1e-6)
    # ... and adapter 0 stopped where it stops when trained alone.
    one = _stack(1, seed=0)
    alone = train_stacked(one, [train[0]], cfg, val_datasets=[val[0]], lrs=lrs[:1],
                         adapter_seeds=[0])
    assert (alone.adapters[0].steps, alone.adapters[0].best_step) == (a0.steps, a0.best_step)
    assert _close(adapter_state(model, 0), adapter_state(one, 0), init)


def test_init_from_copies_the_given_adapter_into_every_slot():
    ref = {key: torch.randn_like(v) for key, v in adapter_state(_stack(1, 0), 0).items()}
    model = _stack(3, seed=0)
    train_stacked(model, _datasets(), CFG, lrs=[0.0, 0.0, 0.0], init_from=ref)
    for k in range(3):
        assert _max_diff(adapter_state(model, k), ref) == 0


def test_l2_penalty_pulls_towards_the_reference():
    data = _datasets()
    ref = {key: 0.05 * torch.randn_like(v) for key, v in adapter_state(_stack(1, 0), 0).items()}
    # Adam is scale-invariant: under a huge lambda each weight oscillates around the reference
    # with an amplitude of about the last steps' lr (lr / (steps - warmup) at the end of the
    # linear decay), so the run needs enough steps for that to fall well below the free drift.
    cfg = TrainConfig(**{**CFG.__dict__, "max_grad_norm": 0.0, "weight_decay": 0.0,
                         "epochs": 4})

    def drift(lam):
        model = _stack(3, seed=0)
        train_stacked(model, data, cfg, init_from=ref, l2_to=ref, l2_lambda=lam)
        return [_max_diff(adapter_state(model, k), ref) for k in range(3)]

    free, pulled = drift(0.0), drift(1e6)
    assert all(f > 0.02 for f in free)
    assert all(p < 0.1 * f for p, f in zip(pulled, free))


def test_bad_examples_name_the_adapter_and_field():
    model = _stack(2, seed=0)
    bad = [random_examples(2, 1), [{"input_ids": [3, 4, 5], "labels": [-100, 4]}]]
    with pytest.raises(PersonalError, match=r"datasets\[1\]\[0\]: labels has 2 entries"):
        train_stacked(model, bad, CFG)
    with pytest.raises(PersonalError, match="3 entries; the stack holds 2"):
        train_stacked(model, _datasets(), CFG)


def test_splitting_a_step_into_small_passes_changes_nothing():
    """Adapters' batches split across passes still get their own token-mean gradient."""
    data = _datasets()
    whole, split = _stack(3, seed=0), _stack(3, seed=0)
    init = [adapter_state(whole, k) for k in range(3)]
    train_stacked(whole, data, CFG, lrs=LRS, micro_batch_rows=64)
    train_stacked(split, data, CFG, lrs=LRS, micro_batch_rows=1)
    for k in range(3):
        assert _close(adapter_state(whole, k), adapter_state(split, k), init[k])


def _lengths(passes):
    return [[len(ex["input_ids"]) for _, ex in p] for p in passes]


def test_pack_rows_cuts_where_padding_costs_more_than_a_pass():
    rows = [(k, {"input_ids": [0] * n}) for k, n in enumerate([10, 100, 10, 100, 10])]
    # one pass: 64 + 5 x 100 = 564; long | short: (64 + 200) + (64 + 30) = 358
    assert _lengths(pack_rows(rows, 64, pass_cost=64)) == [[100, 100], [10, 10, 10]]
    # a pass dearer than the padding it saves: 1000 + 500 beats 2000 + 230
    assert _lengths(pack_rows(rows, 64, pass_cost=1000)) == [[100, 100, 10, 10, 10]]
    # never more than micro_batch_rows rows in a pass
    capped = _lengths(pack_rows(rows, 2, pass_cost=1000))
    assert capped[0] == [100, 100] and sorted(map(len, capped)) == [1, 2, 2]
    assert sorted(k for p in pack_rows(rows, 2, pass_cost=64) for k, _ in p) == [0, 1, 2, 3, 4]
    assert pack_rows([], 64) == []
