"""Tiny random models and token data for the engine's tests and benchmarks (no downloads)."""
from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, vocab_size: int = 96, hidden_size: int = 32, num_layers: int = 2,
               num_heads: int = 4, intermediate_size: int = 64, dtype=torch.float32):
    """A randomly initialised LlamaForCausalLM; the same seed gives the same weights."""
    # Loads transformers' Llama modules (~2 s) only when a tiny model is made.
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


#: Architectures of real instruct models (their published configs), for random-weight stand-ins
#: where the weights are not on the machine (tests, GPU benchmarks): SmolLM2-135M-Instruct is a
#: Llama with 9 query / 3 KV heads and tied embeddings; Qwen2.5-0.5B-Instruct a Qwen2 with
#: 14 / 2 heads, biases on q/k/v, tied embeddings and a 151,936-token vocabulary.
REAL_SHAPES = {
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, rope_theta=100000.0,
                                   tie_word_embeddings=True, rms_norm_eps=1e-5)),
    "qwen2.5-0.5b": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                   num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, rope_theta=1000000.0,
                                   tie_word_embeddings=True, rms_norm_eps=1e-6)),
}


def real_shape(name: str, num_layers: int | None = None, seed: int = 0,
               tie_word_embeddings: bool | None = None, dtype=torch.float32):
    """A random-weight model of a real model's shape (`REAL_SHAPES`), optionally at reduced
    depth or with untied embeddings; the same seed gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kind, fields = REAL_SHAPES[name]
    fields = dict(fields, max_position_embeddings=2048, pad_token_id=0)
    if num_layers is not None:
        fields["num_hidden_layers"] = num_layers
    if tie_word_embeddings is not None:
        fields["tie_word_embeddings"] = tie_word_embeddings
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                             "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    torch.manual_seed(seed)
    return model_cls(config_cls(**fields)).to(dtype).eval()


def random_examples(n: int, seed: int, vocab_size: int = 96, min_len: int = 6,
                    max_len: int = 14, prompt_len: int = 3) -> list[dict]:
    """n examples of random tokens: the first `prompt_len` are prompt (label -100), the rest
    are targets; token ids avoid 0-2 (pad, bos, eos)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(3, vocab_size, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt_len + ids[prompt_len:]})
    return out


def left_pad(prompts: list[list[int]], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input_ids and attention_mask for a list of token-id prompts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask
