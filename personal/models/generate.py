"""What generation needs from the model layer: prompt ids of an input, an explicit transformers
GenerationConfig, and the text of generated ids up to the end of the turn. Batched
generation itself (`generate`) is `personal.engine.generate`'s: its greedy loop serves plain,
peft and stacked models alike."""
from __future__ import annotations

from typing import Any, Sequence, Union

import torch
import transformers

from personal.data.schema import Example
from personal.models.chat import PromptFormat, stop_ids, token_ids

#: An input to generate from: an example (formatted with the prompt format), an already
#: rendered prompt text, or prompt token ids.
Prompt = Union[Example, str, Sequence[int]]


def prompt_ids(tokenizer: Any, item: Prompt, fmt: PromptFormat, max_new_tokens: int) -> list[int]:
    """Token ids of one input's prompt."""
    if isinstance(item, Example):
        return fmt.prompt_ids(tokenizer, item, max_new_tokens)
    if isinstance(item, str):
        return token_ids(tokenizer, item)
    return list(item)


def generation_config(gen_cfg: Any, tokenizer: Any) -> transformers.GenerationConfig:
    """An explicit transformers GenerationConfig: every setting that changes the output is set,
    so a model's own defaults (e.g. a repetition penalty or sampling) never leak in."""
    stops = sorted(stop_ids(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    kwargs = dict(max_new_tokens=gen_cfg.max_new_tokens, do_sample=gen_cfg.do_sample,
                  num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
                  eos_token_id=stops, pad_token_id=pad, use_cache=True,
                  # Preallocated KV cache: the growing one copies every layer's keys and
                  # values at each token (a third of CPU decoding). Not compiled: prompt
                  # widths change per batch, so compiling would recompile for most batches.
                  cache_implementation="static", disable_compile=True)
    if gen_cfg.do_sample:
        kwargs.update(temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, top_k=0)
    return transformers.GenerationConfig(**kwargs)


def decode_new(tokenizer: Any, new_tokens: torch.Tensor, stops: frozenset[int]) -> str:
    """Text of one row of generated ids, cut at the first end-of-turn id, special tokens
    dropped, surrounding whitespace stripped."""
    ids = new_tokens.tolist()
    for i, t in enumerate(ids):
        if t in stops:
            ids = ids[:i]
            break
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
