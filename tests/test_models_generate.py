"""Batched generation: it says what a model learned and stops at the end of the turn, it is
deterministic, a prompt gives the same text alone or left-padded in a batch, order is kept."""
import dataclasses

import pytest
import torch

from personal.config import GenerationConfig, ModelConfig
from personal.data.schema import Example, Message
from personal.models.base import build_tiny
from personal.models.chat import PromptFormat
from personal.engine.generate import generate
from personal.models.generate import decode_new
from personal.models.tokenizer import train_tokenizer
from personal.models.training import LoopSettings, train_loop


SENTENCES = [
    "Set the lights to 40 percent please.", "Could you warm the room up?",
    "Turn the TV to Netflix.", "Arm the security system.",
]
REPLIES = [
    "I've set the lights to 40% with a warm color.", "The AC is now on heat at 23 degrees.",
    "Done, the TV is on Netflix at volume 20.", "The security system is armed.",
]
FMT = PromptFormat(max_len=256, history_messages=6)


def examples():
    """Four requests, each once with no earlier turns and once after a longer history, so
    prompts have different lengths (left padding is exercised)."""
    out = []
    for i, (ask, reply) in enumerate(zip(SENTENCES, REPLIES)):
        out.append(Example("persona_0", i, 1, None, [Message("user", ask)], reply))
        earlier = [Message("user", SENTENCES[i - 1]), Message("assistant", REPLIES[i - 1])]
        out.append(Example("persona_0", 10 + i, 3, None, earlier + [Message("user", ask)], reply))
    return out


@pytest.fixture(scope="module")
def trained():
    """A tiny Llama trained (all weights) until it answers each request with its reply."""
    tok = train_tokenizer((SENTENCES + REPLIES) * 3, 400)
    mc = dataclasses.replace(ModelConfig(), hidden_size=32, num_layers=2, num_heads=2,
                             intermediate_size=64, max_seq_len=256)
    model = build_tiny(mc, tok, seed=0)
    feats = [FMT.encode(tok, ex) for ex in examples()]
    settings = LoopSettings(lr=2e-2, epochs=120, batch_size=8, warmup_frac=0.05,
                            weight_decay=0.0, max_grad_norm=1.0, seed=0)
    train_loop(model, feats, [], settings, tok.pad_token_id, progress=False)
    return model.eval(), tok


def gen_cfg(**changes):
    return dataclasses.replace(GenerationConfig(), max_new_tokens=40, **changes)


def test_generates_what_it_learned_and_stops_at_the_end_of_the_turn(trained):
    model, tok = trained
    stats = {}
    texts = generate(model, tok, examples(), gen_cfg(), fmt=FMT, stats=stats)
    assert texts == [ex.target for ex in examples()]  # nothing after the end-of-turn token
    # each turn's tokens plus its end-of-turn token, counted once
    assert stats["new_tokens"] == sum(len(tok(t)["input_ids"]) + 1 for t in texts)
    assert stats["prompt_tokens"] == sum(len(FMT.prompt_ids(tok, ex, 40)) for ex in examples())


def test_generation_is_deterministic_and_batch_invariant(trained):
    model, tok = trained
    # unseen prompts make the texts less trivial than the memorised replies
    items = examples() + [Example("persona_1", 0, 1, {"weather": "rainy"},
                                  [Message("user", "Could you set the TV please?")], "")]
    batched = generate(model, tok, items, gen_cfg(batch_size=64), fmt=FMT)
    assert batched == generate(model, tok, items, gen_cfg(batch_size=64), fmt=FMT)
    alone = [generate(model, tok, [it], gen_cfg(batch_size=1), fmt=FMT)[0] for it in items]
    assert batched == alone
    assert generate(model, tok, items[::-1], gen_cfg(batch_size=3), fmt=FMT) == batched[::-1]


def test_prompts_can_be_token_ids_or_rendered_text(trained):
    model, tok = trained
    ex = examples()[0]
    ids = FMT.prompt_ids(tok, ex, 40)
    text = tok.decode(ids, skip_special_tokens=False)
    assert generate(model, tok, [ids, text], gen_cfg()) == [ex.target, ex.target]


def test_sampling_is_seeded(trained):
    model, tok = trained
    items = examples()
    hot = dict(do_sample=True, temperature=3.0)
    a = generate(model, tok, items, gen_cfg(seed=1, **hot), fmt=FMT)
    state = torch.random.get_rng_state()
    assert generate(model, tok, items, gen_cfg(seed=1, **hot), fmt=FMT) == a
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert generate(model, tok, items, gen_cfg(seed=2, **hot), fmt=FMT) != a


def test_decoding_cuts_at_the_first_end_of_turn_token(trained):
    _, tok = trained
    ids = tok("The AC is on.", add_special_tokens=False)["input_ids"]
    end, pad = tok.eos_token_id, tok.pad_token_id
    row = torch.tensor(ids + [end] + ids + [pad, pad])
    assert decode_new(tok, row, frozenset({end})) == "The AC is on."


def hf_greedy(model, tok, items, max_new_tokens=40):
    """transformers' own greedy generate(), one prompt at a time (no padding at all)."""
    from personal.models.chat import stop_ids

    stops = stop_ids(tok)
    out = []
    for it in items:
        ids = torch.tensor([FMT.prompt_ids(tok, it, max_new_tokens)])
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=sorted(stops), pad_token_id=tok.pad_token_id)
        out.append(decode_new(tok, new[0, ids.shape[1]:], stops))
    return out


def test_greedy_matches_transformers_generate_also_through_peft(trained):
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = trained
    items = examples() + [Example("persona_1", 0, 1, {"weather": "rainy"},
                                  [Message("user", w)], "") for w in
                          ("Could you set the TV please?", "warm lights and music", "arm it")]
    assert generate(model, tok, items, gen_cfg(batch_size=64), fmt=FMT) == \
        hf_greedy(model, tok, items)
    # an unmerged peft wrapper (forward(**kwargs)) gives the same as transformers' generate,
    # and its prompt pass still computes only the last position's logits
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False)).eval()
    widths = []
    hook = peft.get_base_model().register_forward_hook(
        lambda mod, args, out: widths.append(out.logits.shape[1]))
    texts = generate(peft, tok, items, gen_cfg(batch_size=64), fmt=FMT)
    hook.remove()
    assert set(widths) == {1}
    assert texts == hf_greedy(peft, tok, items)
    assert texts != hf_greedy(model, tok, items)  # the random LoRA really changed something
