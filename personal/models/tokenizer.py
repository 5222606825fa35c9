"""The built-in base's tokenizer: byte-level BPE trained with `tokenizers` on the background
population, wrapped as a transformers fast tokenizer with special tokens and a chat template.

Every turn is `<|role|>text<|end|>`; `<|end|>` is both the end-of-turn and the eos token, so
generation stops exactly at the end of the assistant turn. Role markers are special tokens, so
a turn's text always tokenizes the same whatever precedes it (the prompt seen in training is
the prompt seen in generation).
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from personal.errors import PersonalError

PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = [PAD, BOS, END, *ROLE_MARKERS]

#: Jinja chat template: one `<|role|>content<|end|>` per message, no separators (each token
#: costs CPU time); the generation prompt is the assistant marker.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (at most `vocab_size` tokens, specials included) and
    wrap it with special tokens and the chat template. Any text encodes (bytes fallback)."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise PersonalError(f"model.vocab_size={vocab_size} is too small for a byte-level BPE "
                            f"(needs at least {len(SPECIAL_TOKENS) + 256})")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=END,
                                  pad_token=PAD, additional_special_tokens=list(ROLE_MARKERS))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn: the eos token plus the first special token the
    chat template writes after an assistant message (e.g. Qwen's `<|im_end|>`)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    convo = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(convo + [{"role": "assistant", "content": "ok"}],
                                         tokenize=False)
    if full.startswith(prompt):
        suffix = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        special = special_ids(tokenizer)
        first = next((t for t in suffix if t in special), None)
        if first is not None and first not in ids:
            ids.append(first)
    if not ids:
        raise PersonalError("the tokenizer has no eos token and its chat template writes no "
                            "special token after an assistant turn: cannot tell where a turn ends")
    return ids


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of every special token, including added ones not named in `all_special_ids`
    (e.g. Llama 3's `<|eot_id|>`)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
