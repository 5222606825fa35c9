"""Per-adapter soft prompts and user embedding vectors, batched like the LoRA stack.

    attach_prompts(model, num_adapters=200, prefix_len=8, user_vector=True)

- prefix: a table [K, L, d] of virtual tokens put in front of each row's tokens;
- user vector: a table [K, d] added to the input embedding of every real token of the row
  (also to each generated token), a per-user bias of the input space.

Both go in through `inputs_embeds`, so they reach every layer and really change what is
generated (unlike peft's PrefixTuning, which transformers 5's `generate()` drops). Rows with
adapter index -1 get neither; mixture weights mix the tables.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
from torch import nn

from personal.engine.sampler import IGNORE
from personal.engine.stacked_lora import Routing, adapter_rows, freeze_base, get_routing
from personal.errors import PersonalError


class PromptTables(nn.Module):
    """Trainable per-adapter tables: `prefix` [K, L, d] and/or `user_vector` [K, d]."""

    def __init__(self, num_adapters: int, dim: int, prefix_len: int, user_vector: bool,
                 device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.prefix_len = prefix_len
        if prefix_len > 0:
            self.prefix = nn.Parameter(torch.zeros(num_adapters, prefix_len, dim,
                                                   device=device, dtype=dtype))
        if user_vector:
            self.user_vector = nn.Parameter(torch.zeros(num_adapters, dim, device=device,
                                                        dtype=dtype))

    def rows_prefix(self, routing: Routing) -> Optional[torch.Tensor]:
        """[B, L, d] prefix of each row (zeros where a row has none), or None."""
        return _per_row(getattr(self, "prefix", None), routing)

    def rows_user_vector(self, routing: Routing) -> Optional[torch.Tensor]:
        """[B, d] user vector of each row (zeros where a row has none), or None."""
        return _per_row(getattr(self, "user_vector", None), routing)


def _per_row(table: Optional[torch.Tensor], routing: Routing) -> Optional[torch.Tensor]:
    if table is None:
        return None
    if routing.index is not None:
        rows = table.index_select(0, routing.gather)
        return rows * routing.keep.to(rows.dtype).view(-1, *([1] * (rows.dim() - 1)))
    w = routing.weights.to(table.dtype)
    return torch.tensordot(w, table, dims=([1], [0]))


def attach_prompts(model: nn.Module, num_adapters: int, prefix_len: int = 0,
                   user_vector: bool = False, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> PromptTables:
    """Give `model` per-adapter soft prompts and/or user vectors (trainable; base frozen).

    Adapter k's prefix starts as the embeddings of L token ids drawn from a generator seeded
    `seed + k` (initialising from the vocabulary trains better than from noise); user vectors
    start at zero, so an untrained vector changes nothing.
    """
    if prefix_len < 0 or (prefix_len == 0 and not user_vector):
        raise PersonalError("attach_prompts needs prefix_len > 0 or user_vector=True")
    if getattr(model, "personal_prompts", None) is not None:
        raise PersonalError("this model already carries prompt tables")
    freeze_base(model)
    get_routing(model, num_adapters)
    emb = model.get_input_embeddings().weight
    tables = PromptTables(num_adapters, emb.shape[1], prefix_len, user_vector, emb.device, dtype)
    with torch.no_grad():
        for k in range(num_adapters if prefix_len else 0):
            g = torch.Generator(device="cpu").manual_seed(seed + k)
            ids = torch.randint(0, emb.shape[0], (prefix_len,), generator=g)
            tables.prefix[k] = emb[ids.to(emb.device)].to(dtype)
    model.personal_prompts = tables
    return tables


def prompt_tables(model: nn.Module) -> Optional[PromptTables]:
    """The model's prompt tables, or None."""
    return getattr(model, "personal_prompts", None)


def leading_pads(attention_mask: torch.Tensor) -> torch.Tensor:
    """Number of left-padding positions per row; rejects masks with holes after a real token
    except right padding (0…0 1…1 0…0 is the only allowed shape)."""
    m = attention_mask.long()
    ones = m.cumsum(-1)
    first = (ones == 0).sum(-1)                       # leading zeros
    length = m.sum(-1)
    pos = torch.arange(m.shape[1], device=m.device)
    inside = (pos >= first[:, None]) & (pos < (first + length)[:, None])
    if bool((inside.long() != m).any()):
        raise PersonalError("attention_mask must be one run of ones per row (left or right "
                            "padding), found holes")
    return first


def build_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Model inputs for the current routing: token embeddings plus each row's user vector,
    with each row's prefix placed right before its first real token.

    Returns `inputs_embeds`, `attention_mask`, `position_ids` (counted from the first real
    position, so left padding changes nothing) and `labels` (-100 on the prefix) if given.
    """
    tables = prompt_tables(model)
    if tables is None:
        out = {"input_ids": input_ids, "attention_mask": attention_mask,
               "position_ids": positions(attention_mask)}
        return out if labels is None else {**out, "labels": labels}
    routing = get_routing(model)
    emb = model.get_input_embeddings()(input_ids)
    vec = tables.rows_user_vector(routing)
    if vec is not None:
        emb = emb + vec[:, None, :].to(emb.dtype) * attention_mask[..., None].to(emb.dtype)
    prefix = tables.rows_prefix(routing)
    if prefix is None:
        out = {"inputs_embeds": emb, "attention_mask": attention_mask,
               "position_ids": positions(attention_mask)}
        return out if labels is None else {**out, "labels": labels}
    return _prepend(prefix.to(emb.dtype), emb, attention_mask, labels, routing)


def _prepend(prefix, emb, attention_mask, labels, routing) -> dict[str, torch.Tensor]:
    b, n, _ = prefix.shape
    t = emb.shape[1]
    pads = leading_pads(attention_mask)
    # Rows without a prefix (index -1) get L extra pads instead, so all rows stay length L + T.
    has = routing.keep.view(-1).long() if routing.index is not None else torch.ones_like(pads)
    extra = (1 - has) * n
    j = torch.arange(n + t, device=emb.device)[None, :]
    start = (pads + extra)[:, None]                 # first position of the row's content
    in_prefix = (j >= start) & (j < (pads + n)[:, None])
    # Index into cat([prefix, emb]): prefix slot j - start, else token j - n + n = j.
    src = torch.where(in_prefix, j - start, j.expand(b, -1))
    src = torch.where(j < start, torch.full_like(src, n), src)  # padding: any masked token
    both = torch.cat([prefix, emb], dim=1)
    embeds = both.gather(1, src[..., None].expand(-1, -1, emb.shape[-1]))
    mask = (j >= start).long() * torch.cat(
        [torch.ones(b, n, dtype=torch.long, device=emb.device), attention_mask.long()], 1
    ).gather(1, src)
    out = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions(mask)}
    if labels is not None:
        ignore = torch.full((b, n), IGNORE, dtype=labels.dtype, device=labels.device)
        full = torch.cat([ignore, labels], 1).gather(1, src)
        out["labels"] = torch.where(in_prefix | (j < start), IGNORE, full)
    return out


class RoutedModel(nn.Module):
    """A model carrying prompt tables, called as the training loop calls a plain one: each
    batch row's table slot comes in `adapters`, the tables are put in front of the tokens
    (`build_inputs`), and the logits of the real tokens come back (their last T columns:
    rows are left-padded, so a prefix always sits before them). Whatever else `model` holds
    (a peft LoRA shared by every row) runs for every row: one LoRA, per-user prompts."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                adapters: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                **_: object):
        with adapter_rows(self.inner, adapters):
            out = self.inner(**build_inputs(self.inner, input_ids, attention_mask),
                             use_cache=False)
        return SimpleNamespace(logits=out.logits[:, -input_ids.shape[1]:])

    def get_output_embeddings(self) -> None:
        """None: the loss takes the plain path (all logits), since the fused one would run
        the decoder without the prompts."""
        return None


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens only (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
