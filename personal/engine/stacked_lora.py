"""Stacked LoRA: K adapters share one frozen linear layer; each batch row picks its adapter.

    inject_stacked_lora(model, num_adapters=200, rank=8, alpha=16)
    with adapter_rows(model, torch.tensor([0, 5, 5, -1])):   # row 3: base model only
        logits = model(input_ids, attention_mask=mask).logits

The base matmul runs once for the whole batch; only the small LoRA path gathers each row's
A [r, in] and B [out, r]. Rows can also carry a weighted mixture of adapters ([B, K] weights),
which is what soft routing needs. Per-adapter weights are exchanged in peft's own key names
(`base_model.model.<module>.lora_A.weight`), so a state loads straight into peft.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from personal.errors import PersonalError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
Rows = Union[torch.Tensor, Sequence[int]]


_versions = itertools.count(1)


class Routing:
    """Which adapter (or mixture of adapters) each batch row uses; shared by all layers."""

    def __init__(self, num_adapters: int):
        self.num_adapters = num_adapters
        self.set(None)

    def set(self, rows: Optional[Rows]) -> None:
        """Set the rows' adapters: LongTensor [B] of indices, or [B, K] mixture weights."""
        self.version = next(_versions)               # keys the layers' gathered-weight caches
        self.index: Optional[torch.Tensor] = None    # LongTensor [B]; -1 = base only
        self.gather: Optional[torch.Tensor] = None   # index with -1 made 0 (masked by keep)
        self.keep: Optional[torch.Tensor] = None     # [B, 1, 1]: 1.0 where a row has an adapter
        self.uniform: Optional[int] = None           # the one adapter all rows use, if so
        self.base_only = False                       # every row is -1
        self.weights: Optional[torch.Tensor] = None  # FloatTensor [B, K]
        self.mixed: Optional[torch.Tensor] = None    # adapters with a nonzero weight
        if rows is None:
            return
        rows = torch.as_tensor(rows)
        if rows.dim() == 1 and not rows.is_floating_point():
            self._set_index(rows)
        elif rows.dim() == 2 and rows.is_floating_point():
            if rows.shape[1] != self.num_adapters:
                raise PersonalError(f"mixture weights need {self.num_adapters} columns (one per "
                                    f"adapter), got shape {tuple(rows.shape)}")
            # Only adapters someone uses enter the matmul: a sparse mixture stays cheap.
            self.mixed = (rows != 0).any(0).nonzero().flatten()
            self.weights = rows
        else:
            raise PersonalError("adapter rows must be a 1-D integer tensor of adapter indices or "
                                f"a 2-D float tensor of mixture weights, got shape "
                                f"{tuple(rows.shape)} dtype {rows.dtype}")

    def _set_index(self, rows: torch.Tensor) -> None:
        used = rows.unique().tolist()
        if used and (used[-1] >= self.num_adapters or used[0] < -1):
            raise PersonalError(f"adapter index out of range: the stack holds "
                                f"{self.num_adapters} adapters (and -1 = base only), got {used}")
        self.index = rows.long()
        self.gather = self.index.clamp(min=0)
        self.keep = (rows >= 0).float().view(-1, 1, 1)
        # One adapter for the whole batch (a single-adapter run, or a batch of one user):
        # plain matmuls beat gathering the same weights once per row.
        if len(used) == 1 and used[0] >= 0:
            self.uniform = used[0]
        self.base_only = used == [-1]

    def batch_size(self) -> Optional[int]:
        t = self.index if self.index is not None else self.weights
        return None if t is None else t.shape[0]


class StackedLoRALinear(nn.Module):
    """A frozen `nn.Linear` plus K LoRA adapters stacked as A [K, r, in] and B [K, out, r]."""

    def __init__(self, base: nn.Linear, routing: Routing, rank: int, alpha: float,
                 dropout: float = 0.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        k = routing.num_adapters
        self.base = base
        self.routing = routing
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.zeros(k, rank, base.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(k, base.out_features, rank, device=dev, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        r = self.routing
        if r.batch_size() is None:
            raise PersonalError("no adapter rows are set: wrap the call in "
                                "`with adapter_rows(model, index_or_weights):`")
        if r.batch_size() != x.shape[0]:
            raise PersonalError(f"adapter rows were set for {r.batch_size()} rows but the batch "
                                f"has {x.shape[0]}")
        if self._frozen_zero():
            return out
        # The adapter runs in its own dtype (fp32 next to a bf16 base), as peft does.
        h = self.dropout(x.to(self.lora_A.dtype)).reshape(x.shape[0], -1, x.shape[-1])
        delta = self._indexed(h) if r.index is not None else self._mixed(h)
        return out + delta.reshape(out.shape).to(out.dtype)

    def _frozen_zero(self) -> bool:
        """True when every B is zero and nothing here trains (a prefix-only fleet, or its
        adapters at prediction): the path would add exactly 0 and pass no gradient, yet cost
        dropout, two batched products and their backward (~1/5 of a prefix fleet's step).
        Checked once per change of the weights."""
        if torch.is_grad_enabled() and (self.lora_A.requires_grad or self.lora_B.requires_grad):
            return False
        key = (self.lora_B._version, self.lora_B.data_ptr())
        cache = getattr(self, "_zero_cache", None)
        if cache is None or cache[0] != key:
            cache = self._zero_cache = (key, not bool(self.lora_B.detach().any()))
        return cache[1]

    def _indexed(self, h: torch.Tensor) -> torch.Tensor:
        r = self.routing
        if r.base_only:
            return h.new_zeros(h.shape[:2] + (self.base.out_features,))
        if r.uniform is not None:
            return (h @ self.lora_A[r.uniform].t()) @ self.lora_B[r.uniform].t() * self.scaling
        a, b = self._gathered()
        delta = torch.bmm(torch.bmm(h, a), b)                          # [B, T, out]
        return delta * (r.keep.to(delta.dtype) * self.scaling)

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's A^T [B, in, r] and B^T [B, r, out]. Without autograd (generation) they are
        kept until the routing or the weights change, so decoding gathers once, not per token."""
        r = self.routing
        key = (r.version, self.lora_A._version, self.lora_B._version,
               self.lora_A.data_ptr(), self.lora_B.data_ptr())
        cache = getattr(self, "_gather_cache", None)
        if cache is not None and cache[0] == key and not torch.is_grad_enabled():
            return cache[1], cache[2]
        # index_select, not A[idx]: several times faster on CPU, same autograd.
        a = self.lora_A.index_select(0, r.gather).transpose(1, 2)
        b = self.lora_B.index_select(0, r.gather).transpose(1, 2)
        self._gather_cache = None if torch.is_grad_enabled() else (key, a, b)
        return a, b

    def _mixed(self, h: torch.Tensor) -> torch.Tensor:
        ks, w = self.routing.mixed, self.routing.weights
        m, r = ks.numel(), self.rank
        a = self.lora_A.index_select(0, ks).reshape(m * r, -1)                  # [m*r, in]
        b = self.lora_B.index_select(0, ks).permute(0, 2, 1).reshape(m * r, -1)  # [m*r, out]
        low = (h @ a.t()).view(h.shape[0], h.shape[1], m, r)
        low = low * w[:, ks].to(low.dtype).view(-1, 1, m, 1)
        return (low.reshape(h.shape[0], h.shape[1], m * r) @ b) * self.scaling


def inject_stacked_lora(model: nn.Module, num_adapters: int, rank: int = 8, alpha: float = 16.0,
                        dropout: float = 0.0, target_modules: Sequence[str] = DEFAULT_TARGETS,
                        seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace the target `nn.Linear` modules of `model` by stacked LoRA layers (in place).

    Base weights are frozen. Adapter k's A is initialised like peft (kaiming uniform, a=sqrt(5))
    from its own generator seeded `seed + k`, so adapter k of a stack starts exactly where a
    one-adapter stack injected with `seed + k` starts; every B starts at zero.
    """
    if num_adapters < 1 or rank < 1:
        raise PersonalError(f"need num_adapters >= 1 and rank >= 1, got {num_adapters}, {rank}")
    if lora_layers(model):
        raise PersonalError("this model already carries stacked LoRA layers")
    targets = set(target_modules)
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.split(".")[-1] in targets]
    if not found:
        names = sorted({n.split(".")[-1] for n, m in model.named_modules()
                        if isinstance(m, nn.Linear)})
        raise PersonalError(f"no linear module named {sorted(targets)} in the model; its linear "
                            f"modules are {names}")
    freeze_base(model)
    routing = get_routing(model, num_adapters)
    for name, linear in found:
        parent_name, _, child = name.rpartition(".")
        layer = StackedLoRALinear(linear, routing, rank, alpha, dropout, dtype)
        layer.module_name = name
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    model._stacked_lora_spec = {"rank": rank, "alpha": alpha, "dropout": dropout,
                                "target_modules": sorted({n.split(".")[-1] for n, _ in found})}
    reset_lora(model, seed)
    return model


def freeze_base(model: nn.Module) -> None:
    """Freeze every parameter except the stacked (per-adapter) ones."""
    stacked = {id(p) for p in stacked_parameters(model).values()}
    for p in model.parameters():
        if id(p) not in stacked:
            p.requires_grad_(False)


def get_routing(model: nn.Module, num_adapters: Optional[int] = None) -> Routing:
    """The model's shared routing object, created on first use with `num_adapters`."""
    routing = getattr(model, "_stacked_routing", None)
    if routing is None:
        if num_adapters is None:
            raise PersonalError("the model has no adapter stack: call inject_stacked_lora or "
                                "attach_prompts first")
        routing = Routing(num_adapters)
        model._stacked_routing = routing
    elif num_adapters is not None and routing.num_adapters != num_adapters:
        raise PersonalError(f"the model's stack holds {routing.num_adapters} adapters, "
                            f"not {num_adapters}")
    return routing


def lora_layers(model: nn.Module) -> list[StackedLoRALinear]:
    """The stacked LoRA layers of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, StackedLoRALinear)]


@torch.no_grad()
def reset_lora(model: nn.Module, seed: int = 0) -> None:
    """Initialise adapter k like peft, from a generator seeded `seed + k`; B = 0."""
    layers = lora_layers(model)
    for k in range(get_routing(model).num_adapters):
        g = torch.Generator(device="cpu").manual_seed(seed + k)
        for layer in layers:
            a = torch.empty(layer.lora_A.shape[1:], dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)
            layer.lora_A[k].copy_(a)
            layer.lora_B[k].zero_()


def set_adapter_rows(model: nn.Module, rows: Optional[Rows]) -> None:
    """Route the next forward passes: LongTensor [B] of adapter indices (-1 = base only) or
    float [B, K] mixture weights; None clears the routing."""
    routing = get_routing(model)
    if rows is not None:
        rows = torch.as_tensor(rows)
        device = _model_device(model)
        rows = rows.to(device)
    routing.set(rows)


def keep_rows(model: nn.Module, keep: torch.Tensor) -> None:
    """Route only rows `keep` (LongTensor) of the current routing, in that order: decoding
    drops the rows that have finished. A model without a stack, or no rows set: nothing."""
    routing = getattr(model, "_stacked_routing", None)
    if routing is None or routing.batch_size() is None:
        return
    rows = routing.index if routing.index is not None else routing.weights
    routing.set(rows.index_select(0, keep.to(rows.device)))


@contextlib.contextmanager
def adapter_rows(model: nn.Module, rows: Rows) -> Iterator[None]:
    """Context manager form of `set_adapter_rows`; restores the previous routing on exit."""
    routing = get_routing(model)
    saved = dict(vars(routing))
    set_adapter_rows(model, rows)
    try:
        yield
    finally:
        vars(routing).update(saved)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- per-adapter states in peft key names ------------------------------------------------------

def stacked_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter with a leading adapter dimension K, by per-adapter state key.

    LoRA keys are peft's (`base_model.model.<module>.lora_A.weight`); soft-prompt tables use
    `prompts.prefix` and `prompts.user_vector`.
    """
    params = {}
    for layer in lora_layers(model):
        params[f"base_model.model.{layer.module_name}.lora_A.weight"] = layer.lora_A
        params[f"base_model.model.{layer.module_name}.lora_B.weight"] = layer.lora_B
    prompts = getattr(model, "personal_prompts", None)
    if prompts is not None:
        params.update({f"prompts.{n}": p for n, p in prompts.named_parameters()})
    return params


def adapter_state(model: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """A copy of adapter k's weights, keyed as peft keys them (plus `prompts.*` if present)."""
    return {key: p[k].detach().clone() for key, p in stacked_parameters(model).items()}


@torch.no_grad()
def load_adapter_state(model: nn.Module, k: Union[int, Sequence[int], None],
                       state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy one adapter's weights into slot k (an index, a list of them, or None for all).

    `strict` demands that the state holds every stacked key; extra keys are always errors.
    """
    params = stacked_parameters(model)
    extra = sorted(set(state) - set(params))
    missing = sorted(set(params) - set(state))
    if extra:
        raise PersonalError(f"adapter state has keys the model lacks, e.g. {extra[:3]}")
    if strict and missing:
        raise PersonalError(f"adapter state lacks keys, e.g. {missing[:3]}")
    slots = slice(None) if k is None else k
    for key, value in state.items():
        p = params[key]
        if tuple(value.shape) != tuple(p.shape[1:]):
            raise PersonalError(f"{key}: shape {tuple(value.shape)} does not fit the stack's "
                                f"{tuple(p.shape[1:])} (different rank or model?)")
        p[slots] = value.to(device=p.device, dtype=p.dtype)


@dataclass
class StackedWeights:
    """Weights of K adapters, stacked: what `import_peft` returns and a stack loads."""

    rank: int
    alpha: float
    target_modules: list[str]
    tensors: dict[str, torch.Tensor]  # per-adapter state key -> [K, ...]

    @property
    def num_adapters(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def adapter(self, k: int) -> dict[str, torch.Tensor]:
        """Adapter k's state (peft key names)."""
        return {key: t[k] for key, t in self.tensors.items()}


def stacked_weights(model: nn.Module) -> StackedWeights:
    """A detached copy of all adapters of the model's stack."""
    spec = getattr(model, "_stacked_lora_spec", {"rank": 0, "alpha": 0.0, "target_modules": []})
    tensors = {key: p.detach().clone() for key, p in stacked_parameters(model).items()}
    return StackedWeights(spec["rank"], spec["alpha"], list(spec["target_modules"]), tensors)


@torch.no_grad()
def load_stacked_weights(model: nn.Module, weights: StackedWeights, strict: bool = True) -> None:
    """Copy a whole stack in; the model's stack must hold as many adapters."""
    k = get_routing(model).num_adapters
    if weights.num_adapters != k:
        raise PersonalError(f"the weights hold {weights.num_adapters} adapters, the model's "
                            f"stack {k}")
    for j in range(k):
        load_adapter_state(model, j, weights.adapter(j), strict=strict)
