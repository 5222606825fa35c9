"""LoRA adapter training on a tiny random Llama: it learns, it is reproducible, it saves and
reloads exactly, it leaves the base alone, and early stopping keeps the best weights."""
import copy
import dataclasses

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict

from conftest import tiny_lm
from personal.config import LoraConfig, TrainConfig
from personal.data.schema import Example, Message
from personal.models.chat import PromptFormat
from personal.models.lora import train_lora
from personal.models.training import collate, evaluate_loss


SENTENCES = [
    "Set the lights to 40 percent please.", "Could you warm the room up?",
    "Turn the TV to Netflix.", "Arm the security system.",
]
REPLIES = [
    "I've set the lights to 40% with a warm color.", "The AC is now on heat at 23 degrees.",
    "Done, the TV is on Netflix at volume 20.", "The security system is armed.",
]
FMT = PromptFormat(max_len=256, history_messages=6)


@pytest.fixture(scope="module")
def world():
    return tiny_lm(SENTENCES + REPLIES)


def examples(n=8):
    return [Example(f"persona_{i % 2}", i, 1, {"time_of_day": "evening"},
                    [Message("user", SENTENCES[i % 4])], REPLIES[i % 4]) for i in range(n)]


def train_cfg(**changes):
    base = dataclasses.replace(TrainConfig(), lr=1e-2, epochs=8, batch_size=4, eval_every=0,
                               patience=0)
    return dataclasses.replace(base, **changes)


LORA = dataclasses.replace(LoraConfig(), rank=4, alpha=8.0)


def loss_on(model, tok, exs):
    return evaluate_loss(model, [FMT.encode(tok, e) for e in exs], 8, tok.pad_token_id)


def logits(model, tok, exs):
    batch = collate([FMT.encode(tok, e) for e in exs], tok.pad_token_id)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"]).logits


def lora_weights(model):
    return {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}


def test_training_changes_the_adapter_and_lowers_the_loss_on_its_data(world):
    base, tok = world
    data = examples()
    res = train_lora(base, tok, data, [], LORA, train_cfg(), progress=False, fmt=FMT)
    trained = lora_weights(res.model)
    b = [v for k, v in trained.items() if "lora_B" in k]
    assert b and all(v.abs().sum() > 0 for v in b)  # B starts at zero: any change is learning
    before, after = loss_on(base, tok, data), loss_on(res.model, tok, data)
    assert after < before - 2.0
    assert res.steps == 16 and res.examples_seen == 64
    assert res.train_losses[-1][1] < res.train_losses[0][1]


def test_the_base_model_is_left_untouched(world):
    base, tok = world
    data = examples(4)
    before = logits(base, tok, data)
    train_lora(base, tok, data, [], LORA, train_cfg(epochs=2), progress=False, fmt=FMT)
    assert not any("lora" in name for name, _ in base.named_parameters())
    assert torch.equal(logits(base, tok, data), before)


def test_same_seed_gives_identical_adapter_weights(world):
    base, tok = world
    runs = [train_lora(base, tok, examples(), examples(2), LORA, train_cfg(epochs=3, seed=s),
                       progress=False, fmt=FMT) for s in (7, 7, 8)]
    a, b, c = (lora_weights(r.model) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters (init, order)


def test_saved_adapter_reloads_to_identical_logits(world, tmp_path):
    base, tok = world
    res = train_lora(base, tok, examples(), examples(2), LORA, train_cfg(epochs=3),
                     out_dir=tmp_path / "adapter", progress=False, fmt=FMT)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "training.json").is_file()
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter")).eval()
    data = examples(4)
    assert torch.allclose(logits(reloaded, tok, data), logits(res.model, tok, data), atol=1e-6)
    assert not torch.allclose(logits(base, tok, data), logits(res.model, tok, data), atol=1e-3)


def test_early_stopping_restores_the_best_validation_weights(world):
    base, tok = world
    train, val = examples(8), [Example("persona_9", 0, 1, None, [Message("user", "Hello.")],
                                       "Hello, how can I help?")]
    # a huge learning rate wrecks the validation loss: stop after `patience` bad checks and
    # come back to the best weights seen (possibly the untrained adapter at step 0)
    res = train_lora(base, tok, train, val, LORA,
                     train_cfg(lr=3.0, eval_every=1, patience=2, max_grad_norm=100.0),
                     progress=False, fmt=FMT)
    assert res.stopped_early
    assert res.steps == res.best_step + 2
    assert loss_on(res.model, tok, val) == pytest.approx(res.best_val_loss, abs=1e-5)
    assert res.best_val_loss == min(v for _, v in res.val_losses)


def test_masked_loss_matches_the_full_logits_loss_and_ignores_padding(world):
    from personal.models.training import masked_lm_loss

    base, tok = world
    feats = [FMT.encode(tok, e) for e in examples(3)]
    batch = collate(feats, tok.pad_token_id)
    with torch.no_grad():
        fast, n = masked_lm_loss(base, batch)
        full = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], labels=batch["labels"]).loss
        alone = [masked_lm_loss(base, collate([f], tok.pad_token_id)) for f in feats]
    assert n == sum(k for _, k in alone) == sum(sum(t != -100 for t in f["labels"]) for f in feats)
    assert float(fast) == pytest.approx(float(full), abs=1e-5)
    weighted = sum(float(loss) * k for loss, k in alone) / n
    assert float(fast) == pytest.approx(weighted, abs=1e-5)  # left padding changes nothing
