"""Per-adapter optimisation over stacked parameters: AdamW and clipping (the lr schedule is the
training core's, `models.core.lr_factor`).

Every stacked parameter has the adapter as its leading dimension, so adapter k owns slice
`p[k]` of every parameter. Each adapter keeps its own step count, learning rate, gradient norm
and Adam moments; an adapter left out of a step is neither moved nor has its state advanced.
The arithmetic follows `torch.optim.AdamW` (decoupled decay, bias-corrected moments) and
`torch.nn.utils.clip_grad_norm_`, so one adapter here trains as it would alone with them.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


@torch.no_grad()
def clip_per_adapter(params: Sequence[nn.Parameter], adapters: torch.Tensor,
                     max_norm: float) -> torch.Tensor:
    """Clip each listed adapter's gradient to global norm `max_norm`, the norm taken over that
    adapter's slices of all `params` (never across adapters). Returns the norms before clipping."""
    full = adapters.numel() == params[0].shape[0]  # all adapters: no gather/scatter
    sq = None
    for p in params:
        g = (p.grad if full else p.grad.index_select(0, adapters)).float()
        s = g.pow(2).flatten(1).sum(1)
        sq = s if sq is None else sq + s
    norms = sq.sqrt()
    if max_norm > 0:
        # Same formula as clip_grad_norm_: scale by max_norm / (norm + 1e-6), never up.
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for p in params:
            c = coef.view((-1,) + (1,) * (p.dim() - 1)).to(p.grad.dtype)
            if full:
                p.grad.mul_(c)
            else:
                p.grad.index_copy_(0, adapters, p.grad.index_select(0, adapters) * c)
    return norms[adapters] if full else norms


class StackedAdamW:
    """AdamW over stacked parameters with a learning rate and step count per adapter.

    `step(adapters, lrs)` updates only the listed adapters' slices, each with its own
    bias correction (its own number of steps so far) and its own learning rate.
    """

    def __init__(self, params: Sequence[nn.Parameter], num_adapters: int,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.params = list(params)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.steps = [0] * num_adapters
        # Moments in fp32 even for bf16 parameters: tiny adapter updates must not round away.
        self.exp_avg = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]

    @torch.no_grad()
    def step(self, adapters: Sequence[int], lrs: Sequence[float],
             param_scale: Optional[Sequence[float]] = None) -> None:
        """One AdamW step for each adapter in `adapters` with learning rate `lrs[i]`, times
        `param_scale[j]` for parameter j (its group's lr multiplier; default 1)."""
        if not adapters:
            return
        order = sorted(range(len(adapters)), key=lambda i: adapters[i])
        adapters, lrs = [adapters[i] for i in order], [lrs[i] for i in order]
        for k in adapters:
            self.steps[k] += 1
        dev = self.params[0].device
        t = [self.steps[k] for k in adapters]
        # Per-adapter scalars in float64, as torch computes them in Python floats.
        lr = torch.tensor(list(lrs), dtype=torch.float64, device=dev)
        bc1 = torch.tensor([1 - self.betas[0] ** s for s in t], dtype=torch.float64, device=dev)
        bc2_sqrt = torch.tensor([math.sqrt(1 - self.betas[1] ** s) for s in t],
                                dtype=torch.float64, device=dev).float()
        scalars = {}  # by lr multiplier: (step size, decay factor) per adapter
        # Every adapter in the step: update whole tensors in place, no gather/scatter.
        idx = None if len(adapters) == len(self.steps) else torch.tensor(adapters, device=dev)
        scales = param_scale if param_scale is not None else [1.0] * len(self.params)
        for p, m, v, scale in zip(self.params, self.exp_avg, self.exp_avg_sq, scales):
            if scale not in scalars:
                lr_p = lr * scale if scale != 1.0 else lr
                scalars[scale] = ((lr_p / bc1).float(), (1 - lr_p * self.weight_decay).float())
            step_size, decay = scalars[scale]
            shape = (-1,) + (1,) * (p.dim() - 1)
            self._update(p, m, v, idx, step_size.view(shape), bc2_sqrt.view(shape),
                         decay.view(shape))

    def _update(self, p, m, v, idx, step_size, bc2_sqrt, decay) -> None:
        b1, b2 = self.betas
        if idx is None:
            g, mk, vk, x = p.grad.float(), m, v, p.float()
        else:
            g = p.grad.index_select(0, idx).float()
            mk, vk, x = m.index_select(0, idx), v.index_select(0, idx), p.index_select(0, idx)
            x = x.float()
        mk.lerp_(g, 1 - b1)
        vk.mul_(b2).addcmul_(g, g, value=1 - b2)
        x = x * decay
        denom = (vk.sqrt() / bc2_sqrt).add_(self.eps)
        x = x - (mk / denom) * step_size
        if idx is None:
            p.copy_(x)
        else:
            m.index_copy_(0, idx, mk)
            v.index_copy_(0, idx, vk)
            p.index_copy_(0, idx, x.to(p.dtype))

    def state_of(self, k: int) -> dict:
        """Adapter k's optimiser state: step count and moments (copies)."""
        return {"step": self.steps[k], "exp_avg": [m[k].clone() for m in self.exp_avg],
                "exp_avg_sq": [v[k].clone() for v in self.exp_avg_sq]}
