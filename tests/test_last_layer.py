"""The last decoder layer run only where its output is used: a loss computed with its
queries and MLP at the target positions only equals the plain forward's, gradients included,
for left-padded full-model batches and for right-padded adapter-stack batches with prompt
tables; other models keep the plain pass."""
import pytest
import torch

from personal.engine import attach_prompts, inject_stacked_lora
from personal.engine.toy import random_examples, tiny_llama
from personal.models import last_layer


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _examples(n, seed, prompt_len):
    """Random rows whose first `prompt_len` tokens and one middle stretch are not targets
    (a packed session has several such stretches)."""
    out = random_examples(n, seed=seed, min_len=14, max_len=24, prompt_len=prompt_len)
    for ex in out:
        ex["labels"][prompt_len + 2:prompt_len + 5] = [-100] * 3
    return out


def _mlp_widths(model):
    widths = []
    layer = last_layer.last_llama_layer(model)
    return widths, layer.mlp.register_forward_hook(lambda m, a, o: widths.append(a[0].shape[1]))


def _loss_and_grads(model, loss_fn, trim: bool, monkeypatch):
    monkeypatch.setattr(last_layer, "TRIM_SHARE", 0.8 if trim else 0.0)
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()
                         if p.grad is not None}


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for k in grads_a:
        assert torch.allclose(grads_a[k], grads_b[k], atol=1e-6, rtol=1e-4), k


def test_a_full_model_loss_and_gradients_equal_the_plain_pass(monkeypatch):
    from personal.models.training import collate, masked_lm_loss

    model = tiny_llama(seed=3)
    batch = collate(_examples(6, seed=4, prompt_len=6), pad_id=0)   # left-padded
    widths, hook = _mlp_widths(model)
    trimmed = _loss_and_grads(model, lambda: masked_lm_loss(model, batch)[0], True, monkeypatch)
    assert widths[-1] < batch["input_ids"].shape[1]      # the last layer saw fewer positions
    plain = _loss_and_grads(model, lambda: masked_lm_loss(model, batch)[0], False, monkeypatch)
    assert widths[-1] == batch["input_ids"].shape[1]
    hook.remove()
    _assert_same(trimmed, plain)


def test_an_adapter_stack_with_prompt_tables_trains_as_with_the_plain_pass(monkeypatch):
    from personal.engine.sampler import collate
    from personal.engine.train import _row_losses

    model = tiny_llama(seed=5)
    inject_stacked_lora(model, 3, rank=2, alpha=4)
    attach_prompts(model, 3, prefix_len=2, user_vector=True, seed=1)
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "lora_B"):
                layer.lora_B.normal_(0, 0.1)
    rows = [(k % 3, ex) for k, ex in enumerate(_examples(7, seed=6, prompt_len=7))]
    batch = collate(rows, 0, "cpu")                                   # right-padded
    scale = torch.linspace(0.5, 1.5, len(rows))
    widths, hook = _mlp_widths(model)
    trimmed = _loss_and_grads(model, lambda: _row_losses(model, batch, scale)[0], True,
                              monkeypatch)
    assert widths[-1] < batch["input_ids"].shape[1] + 2              # + the prefix
    plain = _loss_and_grads(model, lambda: _row_losses(model, batch, scale)[0], False,
                            monkeypatch)
    hook.remove()
    assert {"personal_prompts.prefix", "personal_prompts.user_vector"} <= set(trimmed[1])
    _assert_same(trimmed, plain)


def test_other_architectures_keep_the_plain_pass():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert last_layer.last_llama_layer(gpt2) is None
    assert last_layer.last_llama_layer(tiny_llama(0)) is not None
