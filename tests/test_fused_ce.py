"""The chunked output-head cross-entropy against the plain logits + F.cross_entropy path."""
import math

import pytest
import torch
import torch.nn.functional as F

from personal.models.fused_ce import linear_cross_entropy


def plain(hidden, weight, target, token_weight=None, bias=None):
    ce = F.cross_entropy(F.linear(hidden, weight, bias).float(), target, reduction="none")
    return (ce if token_weight is None else ce * token_weight).sum(), ce


def leaves(seed, n=11, h=6, v=13, bias=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=dtype).requires_grad_() if bias else None
    target = torch.randint(0, v, (n,), generator=g)
    token_weight = torch.rand(n, generator=g)
    return hidden, weight, b, target, token_weight


def grads(fn, hidden, weight, bias, target, token_weight):
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    total, ce = fn(hidden, weight, target, token_weight, bias)
    total.backward(torch.tensor(0.5))  # a non-unit incoming gradient must scale everything
    return total.detach(), ce.detach(), [None if t is None else t.grad.clone()
                                         for t in (hidden, weight, bias)]


def test_hand_computed_loss_and_gradient():
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    total, ce = linear_cross_entropy(hidden, weight, torch.tensor([0]))
    # logits [1, 0, 0]: loss = log(e + 2) - 1
    assert total.item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)
    assert ce.tolist() == pytest.approx([math.log(math.e + 2) - 1], abs=1e-6)
    total.backward()
    p = [math.e / (math.e + 2), 1 / (math.e + 2), 1 / (math.e + 2)]
    # d/dlogits = softmax - onehot; d/dhidden = that @ weight; d/dweight = outer(that, hidden)
    assert hidden.grad[0].tolist() == pytest.approx([p[0] - 1, p[1]], abs=1e-6)
    assert weight.grad.flatten().tolist() == pytest.approx([p[0] - 1, 0, p[1], 0, p[2], 0],
                                                          abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 11, 64])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_plain_cross_entropy_in_any_chunking(chunk, weighted):
    hidden, weight, bias, target, token_weight = leaves(0)
    tw = token_weight if weighted else None
    want = grads(plain, hidden, weight, bias, target, tw)
    got = grads(lambda *a: linear_cross_entropy(*a[:4], bias=a[4], chunk=chunk),
                hidden, weight, bias, target, tw)
    assert torch.allclose(got[0], want[0], atol=1e-5)
    assert torch.allclose(got[1], want[1], atol=1e-5)
    for g, w in zip(got[2], want[2]):
        assert torch.allclose(g, w, atol=1e-5)


def test_frozen_head_gets_no_gradient_and_no_graph_without_autograd():
    hidden, weight, _, target, token_weight = leaves(1, bias=False)
    weight.requires_grad_(False)
    total, _ = linear_cross_entropy(hidden, weight, target, token_weight, chunk=3)
    total.backward()
    assert weight.grad is None
    want_total, _ = plain(hidden.detach().requires_grad_(), weight, target, token_weight)
    assert total.item() == pytest.approx(want_total.item(), abs=1e-5)
    with torch.no_grad():
        total, ce = linear_cross_entropy(hidden, weight, target, token_weight, chunk=3)
    assert not total.requires_grad and not ce.requires_grad
    assert total.item() == pytest.approx(want_total.item(), abs=1e-5)


def test_bfloat16_head_takes_float32_logits():
    hidden, weight, _, target, _ = leaves(2, bias=False, dtype=torch.bfloat16)
    want = grads(plain, hidden, weight, None, target, None)
    got = grads(lambda *a: linear_cross_entropy(*a[:4], chunk=4), hidden, weight, None,
                target, None)
    assert got[1].dtype == torch.float32
    assert torch.allclose(got[1], want[1], atol=1e-3)
    assert got[2][0].dtype == torch.bfloat16 and got[2][1].dtype == torch.bfloat16
    for g, w in zip(got[2][:2], want[2][:2]):
        assert torch.allclose(g.float(), w.float(), atol=2e-2)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"hidden \(2, 3, 4\) must be \[N, H\]"):
        linear_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.zeros(2).long())


def test_masked_lm_loss_of_a_model_equals_its_full_logits_loss():
    """The fused path through a real causal LM: same loss and same weight gradients as
    cross-entropy over the model's own logits (the path a soft-capped head takes)."""
    from personal.engine.toy import random_examples, tiny_llama
    from personal.models.training import collate, masked_lm_loss

    model = tiny_llama(seed=3)
    batch = collate(random_examples(5, seed=4), pad_id=0)
    loss, n = masked_lm_loss(model, batch)
    loss.backward()
    fused = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs).logits[:, :-1]
    target = batch["labels"][:, 1:]
    want = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=-100)
    want.backward()
    assert n == int((target != -100).sum()) and loss.item() == pytest.approx(want.item(), abs=1e-5)
    for k, p in model.named_parameters():
        assert torch.allclose(fused[k], p.grad, atol=1e-5), k
