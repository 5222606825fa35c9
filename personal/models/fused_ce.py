"""Cross-entropy through the output head in chunks, without materialising all the logits.

A small model's output head is its costliest layer, and the plain path (logits for every
target token, then `F.cross_entropy`) writes a [tokens, vocab] float tensor, reads it for the
log-softmax, writes that, and reads and writes both again in the backward pass. On a CPU
those passes over ~60 MB per pretraining batch run at memory speed, not compute speed.

`linear_cross_entropy` takes the head's weight and the hidden states instead, and walks the
tokens a chunk at a time (a chunk's logits stay in cache): logits, log-sum-exp, the loss,
and, while the chunk is there, its gradients (softmax minus one-hot, times the token's
weight) with respect to the hidden states and the head. The backward pass only scales those
by the incoming gradient. Token weights must therefore be known up front; every loss in
this project is a weighted sum of token losses (a mean per batch, or per adapter).
"""
from __future__ import annotations

from typing import Optional

import torch

#: Logit elements per chunk: 2^20 floats (4 MB) stay in a CPU core's cache; a GPU wants
#: chunks big enough to keep it busy.
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Tokens per chunk for a head of `vocab` outputs on `device`."""
    elements = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"])
    return max(1, elements // max(vocab, 1))


def weighted_sum(ce: torch.Tensor, token_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """sum(token_weight * ce), or sum(ce) without weights."""
    return ce.sum() if token_weight is None else (ce * token_weight).sum()


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         token_weight: Optional[torch.Tensor] = None,
                         bias: Optional[torch.Tensor] = None,
                         chunk: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over tokens of token_weight * cross-entropy, the per-token cross-entropies).

    hidden [N, H] and weight [V, H] (and bias [V]) give logits = hidden @ weight.T + bias,
    taken in float32 like `F.cross_entropy(logits.float(), target)`. The sum is
    differentiable with respect to hidden, weight and bias; the per-token values [N]
    (float32) are detached, for logging. With autograd off (or nothing to differentiate)
    no gradients are computed at all."""
    if hidden.dim() != 2 or target.shape != hidden.shape[:1]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)} must be [N, H] "
                         f"and target {tuple(target.shape)} [N]")
    chunk = chunk or chunk_rows(weight.shape[0], hidden.device)
    if token_weight is not None:
        token_weight = token_weight.to(device=hidden.device, dtype=torch.float32)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if not wants_grad:
        ce = _chunked(hidden, weight, bias, target, None, chunk, False, False)[0]
        return weighted_sum(ce, token_weight), ce
    total, ce = _LinearCrossEntropy.apply(hidden, weight, bias, target, token_weight, chunk)
    return total, ce


def _chunked(hidden, weight, bias, target, token_weight, chunk, need_h, need_w):
    """Per-token losses, and the gradients of sum(token_weight * loss) if asked."""
    n = hidden.shape[0]
    ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
        if need_w else None
    grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
        if need_w and bias is not None else None
    # one buffer for every chunk's logits: a fresh multi-MB tensor per chunk costs page
    # faults on first touch, as much as the matrix product that fills it on a CPU
    buf = torch.empty(min(chunk, n), weight.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, n, chunk):
        h, t = hidden[start:start + chunk], target[start:start + chunk]
        logits = _logits(h, weight, bias, buf[:len(t)])
        picked = logits.gather(1, t[:, None])
        top = logits.max(dim=1, keepdim=True).values
        exp = logits.sub_(top).exp_()  # in place: the chunk's logits are not needed again
        norm = exp.sum(dim=1, keepdim=True)
        ce[start:start + chunk] = (top + norm.log() - picked).squeeze(1)
        if not (need_h or need_w):
            continue
        # d(w_i * loss_i)/d(logits_i) = w_i * (softmax_i - onehot_i), built over the logits
        w_i = norm.new_ones(norm.shape) if token_weight is None else \
            token_weight[start:start + chunk, None]
        g = exp.mul_(w_i / norm)
        g.scatter_add_(1, t[:, None], -w_i)
        g_low = g.to(weight.dtype)  # the products run in the weight's dtype (tensor cores)
        if need_h:
            torch.mm(g_low, weight, out=grad_h[start:start + chunk])
        if need_w:
            if g_low.dtype == torch.float32:
                grad_w.addmm_(g_low.t(), h)
            else:  # a bf16 product, summed over chunks in float32
                grad_w.add_(torch.mm(g_low.t(), h))
            if grad_b is not None:
                grad_b.add_(g.sum(0))
    return ce, grad_h, grad_w, grad_b


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            out: torch.Tensor) -> torch.Tensor:
    """h @ weight.T + bias in float32, written into `out`."""
    if h.dtype != torch.float32:
        return out.copy_(torch.nn.functional.linear(h, weight, bias))
    if bias is None:
        return torch.mm(h, weight.t(), out=out)
    return torch.addmm(bias, h, weight.t(), out=out)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and its gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, token_weight, chunk):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_w = need_w or (bias is not None and ctx.needs_input_grad[2])
        ce, grad_h, grad_w, grad_b = _chunked(hidden, weight, bias, target, token_weight,
                                              chunk, need_h, need_w)
        total = weighted_sum(ce, token_weight)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(ce)
        return total, ce

    @staticmethod
    def backward(ctx, grad_total, _grad_ce):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        scale = lambda g, dtype: None if g is None else (g * grad_total).to(dtype)  # noqa: E731
        return (None if grad_h is None else grad_h * grad_total.to(grad_h.dtype),
                scale(grad_w, w_dtype), scale(grad_b, b_dtype), None, None, None)
