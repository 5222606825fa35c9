"""The last decoder layer, run only where its output is used.

A causal LM's last layer feeds nothing but the output head. Its keys and values serve the
later positions of the layer itself, but its queries, attention, output projection and MLP
matter only at the positions whose logits are used: the last one when generating, the
target positions when computing a loss. On the 2-layer built-in base that layer is half of
the model, so:

- `keys_and_values_only(layer)`: the prompt pass of generation writes the layer's keys and
  values for every position but the last, which then runs as a decoding step;
- `target_hidden(model, inputs, sel)`: a loss runs the layer's queries and MLP at the
  target positions only (37% of a packed session's tokens).

Both follow `LlamaDecoderLayer` / `LlamaAttention` of transformers and are used only for
exactly those classes (`last_llama_layer`); every other model runs its plain forward.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from personal.models.core import unwrapped

#: A loss keeps the trimmed path while its rows' target positions are at most this share of
#: the columns (the gathers and the ragged attention cost a little).
TRIM_SHARE = 0.8


def last_llama_layer(model) -> Optional[torch.nn.Module]:
    """The last decoder layer of a transformers Llama model (also under a peft wrapper or
    with stacked LoRA / prompt tables), else None."""
    # transformers' Llama modules load here, not at import (~2 s; loaded anyway once a Llama
    # model exists), and the same below.
    try:
        from transformers.models.llama import modeling_llama
    except ImportError:  # pragma: no cover
        return None
    inner = getattr(unwrapped(model), "model", None)
    layers = getattr(inner, "layers", None)
    if not layers or type(layers[-1]) is not modeling_llama.LlamaDecoderLayer or \
            type(layers[-1].self_attn) is not modeling_llama.LlamaAttention:
        return None
    return layers[-1]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb(x, x, cos, sin)[1]  # the key branch: same formula as HF's


def _keys_values(layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's rotated keys and its values [B, kv_heads, T, head_dim], as
    `LlamaAttention.forward` computes them from the normed input `h`."""
    attn = layer.self_attn
    shape = (*h.shape[:-1], -1, attn.head_dim)
    keys = attn.k_proj(h).view(shape).transpose(1, 2)
    values = attn.v_proj(h).view(shape).transpose(1, 2)
    return _rope(keys, cos, sin), values


@contextlib.contextmanager
def _forward_replaced(layer, forward) -> Iterator[None]:
    layer.forward = forward
    try:
        yield
    finally:
        del layer.forward  # the class's own forward again


def keys_and_values_only(layer):
    """Within: `layer` only writes its keys and values for the positions it gets to the KV
    cache and passes its input on."""
    def forward(hidden_states, attention_mask=None, position_ids=None, cache=None,
                use_cache=False, position_embeddings=None, **kwargs):
        keys, values = _keys_values(layer, layer.input_layernorm(hidden_states),
                                    *position_embeddings)
        cache.update(keys, values, layer.self_attn.layer_idx,
                     kwargs={"position_ids": position_ids, "use_cache": use_cache, **kwargs})
        return hidden_states

    return _forward_replaced(layer, forward)


def _at_positions(layer, idx: torch.Tensor, key_mask: torch.Tensor):
    """Within: `layer` returns its output [B, Q, d] at positions `idx` [B, Q] only; each
    query attends the keys at or before its position that `key_mask` [B, T] keeps."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    attn = layer.self_attn

    def forward(hidden_states, attention_mask=None, position_ids=None, cache=None,
                use_cache=False, position_embeddings=None, **kwargs):
        b, t, d = hidden_states.shape
        cos, sin = (x.expand(b, -1, -1) for x in position_embeddings)
        h = layer.input_layernorm(hidden_states)
        keys, values = _keys_values(layer, h, cos, sin)
        at = idx[..., None]
        hq = h.gather(1, at.expand(-1, -1, d))
        queries = attn.q_proj(hq).view(*hq.shape[:-1], -1, attn.head_dim).transpose(1, 2)
        queries = _rope(queries, cos.gather(1, at.expand(-1, -1, cos.shape[-1])),
                        sin.gather(1, at.expand(-1, -1, sin.shape[-1])))
        causal = torch.arange(t, device=idx.device)[None, None, :] <= at
        mask = (causal & key_mask[:, None, :].bool())[:, None]          # [B, 1, Q, T]
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                          eager_attention_forward)
        out, _ = interface(attn, queries, keys, values, mask,
                           dropout=attn.attention_dropout if attn.training else 0.0,
                           scaling=attn.scaling)
        out = attn.o_proj(out.reshape(*hq.shape[:-1], -1).contiguous())
        x = hidden_states.gather(1, at.expand(-1, -1, d)) + out
        return x + layer.mlp(layer.post_attention_layernorm(x))

    return _forward_replaced(layer, forward)


def target_hidden(model, decoder, inputs: dict, sel: torch.Tensor) -> torch.Tensor:
    """The decoder's final hidden states at the positions `sel` [B, T-1] marks, in the order
    of `last_hidden_state[:, :-1][sel]`, computing the last layer there only when that
    saves work (a Llama last layer with SDPA attention, targets at most `TRIM_SHARE` of the
    columns); else from one plain pass."""
    layer = last_llama_layer(model)
    counts = sel.sum(1)
    width = int(counts.max()) if sel.numel() else 0
    if layer is None or width == 0 or width > TRIM_SHARE * sel.shape[1] or \
            layer.self_attn.config._attn_implementation != "sdpa":
        return decoder(**inputs, use_cache=False).last_hidden_state[:, :-1][sel]
    # Each row's target positions first, ascending (a stable sort); the slots past a row's
    # count point at its last column, whose keys are never all masked (no NaN to backprop).
    t = sel.shape[1] + 1
    idx = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=sel.device)[None, :] < counts[:, None]
    idx = torch.where(valid, idx, torch.full_like(idx, t - 1))
    with _at_positions(layer, idx, inputs["attention_mask"]):
        hidden = decoder(**inputs, use_cache=False).last_hidden_state   # [B, width, d]
    return hidden[valid]
