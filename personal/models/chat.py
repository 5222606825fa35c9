"""The one chat format every strategy uses, and its tokenization.

A prompt is: a neutral system instruction, the session context (meta, or an explicit
"Context: unknown." — never invented), optionally the user's character sketch (an explicit,
leaky baseline; off by default) and extra context (e.g. retrieved past exchanges), then the
last N history messages, then the assistant turn. Everything goes through the tokenizer's own
chat template, so any Hugging Face model with a template works.

Training sequences are `prompt ids + target ids`, where the prompt ids are exactly the ids
generation is given, and the loss covers only the target turn and its end-of-turn token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Optional, Sequence

from transformers import PreTrainedTokenizerBase

from personal.data.schema import META_FIELDS, Dataset, Example, Message, Meta
from personal.errors import PersonalError
from personal.models.tokenizer import end_of_turn_ids

IGNORE = -100
"""Label of tokens that carry no loss (prompt, padding)."""

SYSTEM_PROMPT = ("You are a smart-home assistant for the TV, AC, lights, speaker and security "
                 "system.")
"""Neutral (nothing about the user) and short: every token of it is paid on every example."""


def render_context(meta: Meta) -> str:
    """The session context as one short line ("Context: evening, weekday, after sunset, rainy,
    cold outside."; the values of the five fields never overlap, so no labels are needed).
    `None` (or empty) meta says "unknown" rather than guessing."""
    if not meta:
        return "Context: unknown."
    parts = []
    for key in [k for k in META_FIELDS if k in meta]:
        value = str(meta[key]).replace("_", " ")
        parts.append(f"{value} outside" if key == "outdoor_temp" else value)
    parts += [f"{k.replace('_', ' ')}: {meta[k]}" for k in sorted(meta) if k not in META_FIELDS]
    return "Context: " + ", ".join(parts) + "."


def system_text(meta: Meta, character: Optional[str] = None,
                extra_context: Optional[str] = None) -> str:
    """The system message: instruction, context, then the optional character and extra context."""
    parts = [SYSTEM_PROMPT, render_context(meta)]
    if character:
        parts.append(f"About the user: {character}")
    if extra_context:
        parts.append(extra_context)
    return "\n".join(parts)


def last_messages(history: Sequence[Message], n: Optional[int]) -> list[Message]:
    """The last `n` messages of `history` (all of them when n is None)."""
    if n is None:
        return list(history)
    return list(history[-n:]) if n > 0 else []


def build_messages(example: Example, history: Sequence[Message], *,
                   character: Optional[str] = None, extra_context: Optional[str] = None,
                   with_target: bool = True) -> list[dict[str, str]]:
    """Chat messages (role/content dicts) for `example` with the given `history`."""
    messages = [{"role": "system", "content": system_text(example.meta, character, extra_context)}]
    messages += [{"role": m.role, "content": m.text} for m in history]
    if with_target:
        messages.append({"role": "assistant", "content": example.target})
    return messages


# --- Tokenization ---------------------------------------------------------------------------

def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
           add_generation_prompt: bool = False) -> str:
    """Apply the tokenizer's chat template; a template failure becomes a PersonalError."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as err:  # jinja errors, missing template: name the model's tokenizer
        raise PersonalError(f"chat template of {tokenizer.name_or_path or 'the tokenizer'} "
                            f"failed: {err}") from None


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of `text` without added bos/eos (the chat template writes those itself)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=16)
def stop_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """End-of-turn ids of `tokenizer`, computed once per tokenizer object."""
    return frozenset(end_of_turn_ids(tokenizer))


def until_end_of_turn(ids: list[int], stops: frozenset[int]) -> list[int]:
    """`ids` up to and including the first end-of-turn id (what follows is template filler)."""
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i + 1]
    return ids


def split_prompt_target(tokenizer: PreTrainedTokenizerBase,
                        messages: list[dict[str, str]]) -> tuple[str, str]:
    """(prompt text ending with the generation prompt, the rest: target turn + end marker)."""
    prompt = render(tokenizer, messages[:-1], add_generation_prompt=True)
    full = render(tokenizer, messages)
    if not full.startswith(prompt):
        raise PersonalError(f"chat template of {tokenizer.name_or_path}: the generation prompt "
                            f"is not a prefix of the rendered conversation; cannot mask the loss")
    return prompt, full[len(prompt):]


def _too_long(example: Example, need: int, max_len: int) -> PersonalError:
    return PersonalError(
        f"example {example.persona_id} session {example.session_id} turn {example.turn_index}: "
        f"{need} tokens even without history exceed the limit of {max_len} "
        f"(raise model.max_seq_len)")


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, max_len: int, *,
                   history_messages: Optional[int] = None, character: Optional[str] = None,
                   extra_context: Optional[str] = None) -> dict[str, list[int]]:
    """Training sequence of one example: input_ids, labels (IGNORE except the target turn and
    its end-of-turn token) and attention_mask. History is dropped oldest-first to fit `max_len`;
    the target is never cut (a PersonalError names the example if it cannot fit)."""
    history = last_messages(example.history, history_messages)
    stops = stop_ids(tokenizer)
    for start in range(len(history) + 1):
        messages = build_messages(example, history[start:], character=character,
                                  extra_context=extra_context)
        prompt_text, target_text = split_prompt_target(tokenizer, messages)
        prompt = token_ids(tokenizer, prompt_text)
        target = until_end_of_turn(token_ids(tokenizer, target_text), stops)
        if len(prompt) + len(target) <= max_len:
            return {"input_ids": prompt + target,
                    "labels": [IGNORE] * len(prompt) + target,
                    "attention_mask": [1] * (len(prompt) + len(target))}
    raise _too_long(example, len(prompt) + len(target), max_len)


def build_prompt_ids(tokenizer: PreTrainedTokenizerBase, example: Example, max_len: int, *,
                     history_messages: Optional[int] = None, character: Optional[str] = None,
                     extra_context: Optional[str] = None) -> list[int]:
    """Prompt ids for generating `example`'s assistant turn (ends with the generation prompt),
    at most `max_len` ids: history is dropped oldest-first, exactly as in `encode_example`."""
    history = last_messages(example.history, history_messages)
    for start in range(len(history) + 1):
        messages = build_messages(example, history[start:], character=character,
                                  extra_context=extra_context, with_target=False)
        prompt = token_ids(tokenizer, render(tokenizer, messages, add_generation_prompt=True))
        if len(prompt) <= max_len:
            return prompt
    raise _too_long(example, len(prompt), max_len)


# --- The format as configured ---------------------------------------------------------------

@dataclass(frozen=True)
class PromptFormat:
    """How examples become token sequences in a run: built from the config, so strategies
    cannot disagree on the format. `characters` is empty unless `model.include_character`;
    `extra_context` (e.g. retrieval of past exchanges) maps an example to text or None."""

    max_len: int
    history_messages: int
    characters: Mapping[str, str] = field(default_factory=dict)
    extra_context: Optional[Callable[[Example], Optional[str]]] = None

    @classmethod
    def from_config(cls, cfg: Any, characters: Dataset | Mapping[str, Optional[str]] | None = None,
                    extra_context: Optional[Callable[[Example], Optional[str]]] = None
                    ) -> "PromptFormat":
        """From `cfg.model` / `cfg.data`; `characters` (a Dataset or persona_id -> sketch) is
        used only when `model.include_character` is on, and is then required."""
        chars: dict[str, str] = {}
        if cfg.model.include_character:
            if characters is None:
                raise PersonalError("model.include_character is on but no character sketches "
                                    "were given to the prompt format")
            if isinstance(characters, Dataset):
                characters = {p.persona_id: p.character for p in characters.personas}
            chars = {pid: c for pid, c in characters.items() if c}
        return cls(cfg.model.max_seq_len, cfg.data.history_messages, chars, extra_context)

    def _options(self, example: Example) -> dict[str, Any]:
        extra = self.extra_context(example) if self.extra_context else None
        return {"history_messages": self.history_messages,
                "character": self.characters.get(example.persona_id), "extra_context": extra}

    def encode(self, tokenizer: PreTrainedTokenizerBase, example: Example) -> dict[str, list[int]]:
        """`encode_example` with this format."""
        return encode_example(tokenizer, example, self.max_len, **self._options(example))

    def encode_training(self, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
                        pack_sessions: bool = True) -> list[dict[str, list[int]]]:
        """Training sequences of `examples`. With `pack_sessions`, consecutive turns of one
        session become one sequence with every one of them a target (`encode_dialogue`): the
        same targets for ~1/2.7 of the tokens, turns late in a long session seeing more than
        `history_messages` of history. A session whose turns cannot be pieced together
        exactly (gaps, extra context, character sketches) is encoded turn by turn."""
        if not pack_sessions or self.extra_context is not None or self.characters:
            return [self.encode(tokenizer, e) for e in examples]
        out: list[dict[str, list[int]]] = []
        for group in session_groups(examples):
            messages = session_messages(group)
            if messages is None:
                out += [self.encode(tokenizer, e) for e in group]
            else:
                out += encode_dialogue(tokenizer, group[0].meta, messages, self.max_len)
        return out

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, example: Example,
                   max_new_tokens: int) -> list[int]:
        """`build_prompt_ids` leaving room for `max_new_tokens` generated tokens."""
        budget = self.max_len - max_new_tokens
        if budget <= 0:
            raise PersonalError(f"generation.max_new_tokens={max_new_tokens} leaves no room for "
                                f"a prompt within model.max_seq_len={self.max_len}")
        return build_prompt_ids(tokenizer, example, budget, **self._options(example))


# --- Whole dialogues (pretraining, packed sessions) ----------------------------------------------

def session_groups(examples: Sequence[Example]) -> list[list[Example]]:
    """Runs of consecutive examples of the same session, in order."""
    groups: list[list[Example]] = []
    for e in examples:
        if groups and (groups[-1][-1].persona_id, groups[-1][-1].session_id) == \
                (e.persona_id, e.session_id) and e.turn_index > groups[-1][-1].turn_index:
            groups[-1].append(e)
        else:
            groups.append([e])
    return groups


def session_messages(group: Sequence[Example]) -> Optional[list[Message]]:
    """The session's messages up to its last target, pieced together from the turns' own
    histories, or None when that is not exact: the first turn's history must start at the
    session's first message, every gap between two targets must lie inside the later turn's
    history and hold no assistant message (it would become a target that is not one)."""
    first = group[0]
    if len(first.history) != first.turn_index:
        return None
    messages = list(first.history) + [_target_message(first)]
    for prev, e in zip(group, group[1:]):
        gap = e.turn_index - prev.turn_index - 1
        if gap > len(e.history) or e.meta != first.meta:
            return None
        between = list(e.history[len(e.history) - gap:]) if gap else []
        if any(m.role != "user" for m in between):
            return None
        messages += between + [_target_message(e)]
    return messages


def _target_message(e: Example) -> Message:
    return Message(role="assistant", text=e.target)


def _units(tokenizer: PreTrainedTokenizerBase, meta: Meta, messages: Sequence[Message],
           label_roles: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) per message, system first, cut out of ONE rendering of the dialogue: a
    message's unit is its header, its text and its end-of-turn marker (labelled with the text
    when its role is in `label_roles`)."""
    convo = [{"role": "system", "content": system_text(meta)}]
    convo += [{"role": m.role, "content": m.text} for m in messages]
    text = render(tokenizer, convo)
    pieces, pos = [], 0
    for m in convo:  # gap (template markup) before each text, then the text itself
        at = text.find(m["content"], pos)
        if at < 0:
            raise PersonalError(f"chat template of {tokenizer.name_or_path} rewrites message "
                                f"text; cannot locate the turns of a dialogue")
        pieces += [text[pos:at], m["content"]]
        pos = at + len(m["content"])
    pieces.append(text[pos:])
    ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
    stops, units, head = stop_ids(tokenizer), [], ids[0]
    for k, m in enumerate(convo):
        body, gap = ids[2 * k + 1], ids[2 * k + 2]
        end = until_end_of_turn(gap, stops)
        labelled = k > 0 and m["role"] in label_roles
        target = body + end if labelled else [IGNORE] * len(body + end)
        units.append((head + body + end, [IGNORE] * len(head) + target))
        head = gap[len(end):]
    return units


def encode_dialogue(tokenizer: PreTrainedTokenizerBase, meta: Meta, messages: Sequence[Message],
                    max_len: int, label_roles: Sequence[str] = ("assistant",)
                    ) -> list[dict[str, list[int]]]:
    """A whole dialogue as training sequences with every turn of `label_roles` as a target.
    Dialogues longer than `max_len` are cut at message boundaries into several sequences,
    each starting with the system message (a lone over-long message is truncated)."""
    (head_ids, _), *units = _units(tokenizer, meta, messages, label_roles)
    out: list[dict[str, list[int]]] = []
    ids, labels = list(head_ids), [IGNORE] * len(head_ids)
    for u_ids, u_labels in units:
        if len(ids) + len(u_ids) > max_len and len(ids) > len(head_ids):
            out.append(_sequence(ids, labels))
            ids, labels = list(head_ids), [IGNORE] * len(head_ids)
        ids, labels = (ids + u_ids)[:max_len], (labels + u_labels)[:max_len]
    if len(ids) > len(head_ids):
        out.append(_sequence(ids, labels))
    return out


def _sequence(ids: list[int], labels: list[int]) -> dict[str, list[int]]:
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
