"""The chat format: what the prompt holds, where the loss is, and how it is cut to fit."""
import dataclasses

import pytest

from personal.config import Config
from personal.data.schema import Example, Message
from personal.errors import PersonalError
from personal.models.chat import (IGNORE, PromptFormat, build_prompt_ids, encode_dialogue,
                                  encode_example, render_context)
from personal.models.tokenizer import END, train_tokenizer


SENTENCES = [
    "Set the lights to 40 percent please.", "I've set the lights to 40% with a warm color.",
    "Could you warm the room up?", "The AC is now on heat at 23 degrees.",
    "Turn the TV to Netflix.", "Done, the TV is on Netflix at volume 20.",
]
META = {"time_of_day": "evening", "day_of_week": "weekday", "sun_phase": "after_sunset",
        "weather": "rainy", "outdoor_temp": "cold"}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SENTENCES * 3, 400)


def example(meta=META, n_history=3, target="The AC is now on heat at 23 degrees."):
    history = [Message("user" if i % 2 == 0 else "assistant", SENTENCES[i % 6])
               for i in range(n_history)]
    return Example("persona_007", 4, n_history, meta, history, target)


def prompt_text(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_loss_covers_exactly_the_target_turn_and_its_end_token(tok):
    ex = example()
    f = encode_example(tok, ex, 512)
    labelled = [t for t in f["labels"] if t != IGNORE]
    assert tok.decode(labelled) == ex.target + END
    # the labelled tokens are one contiguous block at the end: the target turn
    first = next(i for i, t in enumerate(f["labels"]) if t != IGNORE)
    assert f["input_ids"][first:] == labelled
    assert len(f["input_ids"]) == len(f["labels"]) == len(f["attention_mask"])


def test_generation_prompt_is_exactly_the_training_prefix(tok):
    ex = example()
    f = encode_example(tok, ex, 512)
    p = build_prompt_ids(tok, ex, 512)
    first = next(i for i, t in enumerate(f["labels"]) if t != IGNORE)
    assert f["input_ids"][:first] == p
    assert prompt_text(tok, p).endswith("<|assistant|>")


def test_unknown_meta_says_unknown_and_known_meta_is_rendered(tok):
    assert render_context(None) == "Context: unknown."
    unknown = prompt_text(tok, build_prompt_ids(tok, example(meta=None), 512))
    assert "Context: unknown." in unknown and "evening" not in unknown
    assert render_context(META) == "Context: evening, weekday, after sunset, rainy, cold outside."
    assert render_context({"outdoor_temp": "very cold", "weather": "snowy"}) == \
        "Context: snowy, very cold outside."  # partial meta: only what is known


def test_prompt_order_system_context_history_then_assistant(tok):
    text = prompt_text(tok, build_prompt_ids(tok, example(), 512))
    positions = [text.index(s) for s in ("smart-home assistant", "Context:", SENTENCES[0],
                                         SENTENCES[1], SENTENCES[2])]
    assert positions == sorted(positions) and text.endswith(SENTENCES[2] + END + "<|assistant|>")
    assert text.count("<|user|>") == 2 and text.count("<|assistant|>") == 2


def test_character_is_off_by_default_and_on_when_configured(tok):
    ex = example()
    sketch = "Nora is a night-shift nurse who likes it warm."
    off = PromptFormat.from_config(Config(), {ex.persona_id: sketch})
    assert sketch not in prompt_text(tok, off.prompt_ids(tok, ex, 16))
    cfg = Config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, include_character=True))
    on = PromptFormat.from_config(cfg, {ex.persona_id: sketch})
    assert sketch in prompt_text(tok, on.prompt_ids(tok, ex, 16))
    with pytest.raises(PersonalError, match="include_character"):
        PromptFormat.from_config(cfg)


def test_extra_context_hook_goes_into_the_prompt(tok):
    fmt = PromptFormat(max_len=512, history_messages=6,
                       extra_context=lambda ex: f"Past exchanges of {ex.persona_id}: lights 40%.")
    text = prompt_text(tok, fmt.prompt_ids(tok, example(), 16))
    assert "Past exchanges of persona_007: lights 40%." in text
    assert text.index("Past exchanges") < text.index(SENTENCES[0])


def test_history_is_cut_to_the_last_n_messages(tok):
    fmt = PromptFormat(max_len=512, history_messages=1)
    text = prompt_text(tok, fmt.prompt_ids(tok, example(n_history=3), 16))
    assert SENTENCES[2] in text and SENTENCES[0] not in text and SENTENCES[1] not in text


def test_truncation_drops_oldest_history_never_the_target(tok):
    ex = example(n_history=5)
    full = encode_example(tok, ex, 1024)
    target_len = sum(t != IGNORE for t in full["labels"])
    limit = len(full["input_ids"]) - 5  # too long by a few tokens: the oldest message must go
    cut = encode_example(tok, ex, limit)
    assert len(cut["input_ids"]) <= limit
    text = prompt_text(tok, cut["input_ids"])
    assert SENTENCES[0] not in text and SENTENCES[4] in text
    assert sum(t != IGNORE for t in cut["labels"]) == target_len
    with pytest.raises(PersonalError, match="persona_007 session 4 turn 5"):
        encode_example(tok, ex, 10)


def test_whole_dialogue_labels_each_turn_of_the_chosen_roles(tok):
    messages = [Message("user", SENTENCES[0]), Message("assistant", SENTENCES[1]),
                Message("user", SENTENCES[2]), Message("assistant", SENTENCES[3])]
    (seq,) = encode_dialogue(tok, META, messages, 512, label_roles=("assistant",))
    labelled = tok.decode([t for t in seq["labels"] if t != IGNORE])
    assert labelled == SENTENCES[1] + END + SENTENCES[3] + END
    (both,) = encode_dialogue(tok, META, messages, 512, label_roles=("user", "assistant"))
    assert tok.decode([t for t in both["labels"] if t != IGNORE]) == END.join(SENTENCES[:4]) + END
    # a limit that fits two messages cuts the dialogue into pieces that each restart the system
    pieces = encode_dialogue(tok, META, messages, len(seq["input_ids"]) - 20)
    assert len(pieces) == 2
    assert all(prompt_text(tok, p["input_ids"]).startswith("<|bos|><|system|>") for p in pieces)


def test_a_chatml_template_works_and_its_end_marker_is_found(tok):
    """Hugging Face models bring their own template (here Qwen-style ChatML with a newline
    after each end marker): the loss still ends at the end-of-turn token."""
    t = train_tokenizer(SENTENCES * 3, 400)
    t.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    t.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                       "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                       "assistant\n{% endif %}")
    ex = example()
    f = encode_example(t, ex, 512)
    assert t.decode([x for x in f["labels"] if x != IGNORE]) == ex.target + "<|im_end|>"
    assert f["input_ids"][-1] == t.convert_tokens_to_ids("<|im_end|>")


def session_of(n_messages):
    """(messages, examples with a 2-message history) of one alternating session."""
    from personal.data.examples import session_examples
    from personal.data.schema import Persona, Session

    msgs = [Message("user" if i % 2 == 0 else "assistant", SENTENCES[i % 6])
            for i in range(n_messages)]
    persona = Persona(persona_id="persona_001", character=None, routines=[],
                      sessions=[Session(session_id=0, meta=META, messages=msgs)])
    return msgs, session_examples(persona, persona.sessions[0], history_messages=2)


def test_packed_sessions_carry_the_same_targets_in_fewer_tokens(tok):
    msgs, examples = session_of(10)
    fmt = PromptFormat(512, 2)
    turns = fmt.encode_training(tok, examples, pack_sessions=False)
    packed = fmt.encode_training(tok, examples, pack_sessions=True)
    assert len(turns) == 5 and len(packed) == 1
    assert packed[0]["input_ids"] == encode_dialogue(tok, META, msgs, 512)[0]["input_ids"]

    def targets(seqs):
        return [tok.decode([t for t in s["labels"] if t != IGNORE]) for s in seqs]
    assert "".join(targets(packed)) == "".join(targets(turns))  # every target, once
    assert sum(len(s["input_ids"]) for s in packed) < sum(len(s["input_ids"]) for s in turns)


def test_a_session_that_cannot_be_pieced_together_is_encoded_turn_by_turn(tok):
    _, examples = session_of(8)
    gappy = [examples[0], examples[3]]  # turns 1 and 7: the assistant turns 3, 5 are missing
    fmt = PromptFormat(512, 2)
    assert fmt.encode_training(tok, gappy) == [fmt.encode(tok, e) for e in gappy]
    late = examples[1:]  # first turn's history does not reach the session's start
    assert fmt.encode_training(tok, late) == [fmt.encode(tok, e) for e in late]
