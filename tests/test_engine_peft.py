"""Engine <-> peft: exported folders load in plain peft with the same logits, peft folders
import into a stack, and mixed-adapter greedy generation equals peft per adapter."""
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from personal.engine import (adapter_rows, adapter_state, export_peft, generate_mixed,
                             import_peft, inject_from_peft, inject_stacked_lora,
                             load_adapter_state)
from personal.engine.toy import left_pad, tiny_llama
from personal.errors import PersonalError

RANK, ALPHA = 4, 8.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _random_stack(k_adapters, scale=0.5):
    """A stack whose adapters really differ (B is zero after init, so set both at random)."""
    model = inject_stacked_lora(tiny_llama(0), k_adapters, RANK, ALPHA, 0.0, TARGETS)
    g = torch.Generator().manual_seed(7)
    for k in range(k_adapters):
        state = {key: scale * torch.randn(v.shape, generator=g)
                 for key, v in adapter_state(model, 0).items()}
        load_adapter_state(model, k, state)
    return model


PROMPTS = [[5, 9, 14, 3, 30], [40, 41], [8, 60, 61, 62, 63, 64, 65], [11, 12, 13], [90, 3, 4]]


def test_export_matches_what_peft_saves_and_loads_with_same_logits(tmp_path):
    model = _random_stack(3)
    out = export_peft(model, 1, tmp_path / "a1", base_model_name_or_path="tiny")
    # Same key names, shapes and config fields as peft itself writes for this LoraConfig.
    native = get_peft_model(tiny_llama(0), LoraConfig(r=RANK, lora_alpha=ALPHA,
                                                      target_modules=TARGETS))
    native.save_pretrained(tmp_path / "native")
    ours, theirs = (load_file(p / "adapter_model.safetensors") for p in (out, tmp_path / "native"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in ours
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", RANK, ALPHA)
    assert sorted(config["target_modules"]) == sorted(TARGETS)

    peft_model = PeftModel.from_pretrained(tiny_llama(0), out).eval()
    ids, mask = left_pad(PROMPTS)
    with torch.no_grad(), adapter_rows(model, torch.full((len(PROMPTS),), 1)):
        engine = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        reference = peft_model(input_ids=ids, attention_mask=mask).logits
        base = tiny_llama(0)(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(engine, reference, atol=1e-5)
    assert (engine - base).abs().max() > 0.1          # the adapter matters


def test_peft_folders_import_into_a_stack_with_the_same_logits(tmp_path):
    dirs = []
    for k in range(2):
        torch.manual_seed(100 + k)
        pm = get_peft_model(tiny_llama(0), LoraConfig(r=RANK, lora_alpha=ALPHA,
                                                      target_modules=TARGETS,
                                                      init_lora_weights=False))
        pm.save_pretrained(tmp_path / f"p{k}")
        dirs.append(tmp_path / f"p{k}")
    weights = import_peft(dirs)
    assert weights.num_adapters == 2 and weights.rank == RANK
    model = inject_from_peft(tiny_llama(0), dirs)
    ids, mask = left_pad(PROMPTS)
    for k in range(2):
        pm = PeftModel.from_pretrained(tiny_llama(0), dirs[k]).eval()
        with torch.no_grad(), adapter_rows(model, torch.full((len(PROMPTS),), k)):
            engine = model(input_ids=ids, attention_mask=mask).logits
        with torch.no_grad():
            assert torch.allclose(engine, pm(input_ids=ids, attention_mask=mask).logits,
                                  atol=1e-5)


def test_mixed_adapter_generation_equals_peft_per_adapter(tmp_path):
    model = _random_stack(3)
    rows = [0, 1, 2, -1, 1]
    ids, mask = left_pad(PROMPTS)
    mixed = generate_mixed(model, ids, mask, torch.tensor(rows), max_new_tokens=8,
                           eos_token_id=2, pad_token_id=0)
    peft_models = {k: PeftModel.from_pretrained(tiny_llama(0), export_peft(model, k, tmp_path
                                                                              / f"a{k}")).eval()
                   for k in range(3)}
    peft_models[-1] = tiny_llama(0)
    for r, (prompt, k) in enumerate(zip(PROMPTS, rows)):
        alone = peft_models[k].generate(input_ids=torch.tensor([prompt]), max_new_tokens=8,
                                        do_sample=False, eos_token_id=2, pad_token_id=0)
        new = alone[0, len(prompt):].tolist()
        assert mixed[r, :len(new)].tolist() == new, f"row {r} (adapter {k})"
        assert all(t == 0 for t in mixed[r, len(new):].tolist())
    # An eos ends a row, which is then padded, while the other rows go on.
    eos = mixed[1, 0].item()
    stopped = generate_mixed(model, ids, mask, torch.tensor(rows), 8, eos_token_id=eos,
                             pad_token_id=0)
    assert stopped[1].tolist() == [eos] + [0] * 7
    assert stopped[2].tolist() == mixed[2].tolist() or eos in mixed[2].tolist()
    # Rows 1 and 4 use the same adapter; the adapters really change the text.
    outputs = [tuple(mixed[r].tolist()) for r in range(len(rows))]
    assert len(set(outputs)) == len(outputs)
    same_prompt_other_adapters = generate_mixed(model, ids[:1].repeat(4, 1), mask[:1].repeat(4, 1),
                                                torch.tensor([0, 1, 2, -1]), 8)
    assert len({tuple(t) for t in same_prompt_other_adapters.tolist()}) == 4


def test_one_hot_weights_equal_indices_and_mixtures_mix_layer_outputs():
    model = _random_stack(3)
    layer = model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        with adapter_rows(model, torch.tensor([0, 2])):
            by_index = layer(x)
        with adapter_rows(model, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])):
            by_weight = layer(x)
        with adapter_rows(model, torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.0, 0.0]])):
            mixed = layer(x)
        deltas = []
        for k in range(3):
            with adapter_rows(model, torch.tensor([k, k])):
                deltas.append(layer(x) - layer.base(x))
    assert torch.allclose(by_index, by_weight, atol=1e-6)
    assert torch.allclose(mixed[0], layer.base(x)[0] + 0.3 * deltas[0][0] + 0.7 * deltas[1][0],
                          atol=1e-5)
    assert torch.allclose(mixed[1], layer.base(x)[1], atol=1e-6)   # zero weights: base only
    # A mixture generates too (soft routing), and differs from either pure adapter.
    ids, mask = left_pad(PROMPTS[:2])
    w = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    out = generate_mixed(model, ids, mask, w, 6)
    assert out.shape == (2, 6)


def test_bad_routing_and_padding_are_clear_errors(tmp_path):
    model = _random_stack(2)
    ids, mask = left_pad(PROMPTS[:2])
    with pytest.raises(PersonalError, match="out of range"):
        generate_mixed(model, ids, mask, torch.tensor([0, 5]), 3)
    with pytest.raises(PersonalError, match="left padding"):
        generate_mixed(model, ids, mask.flip(1), torch.tensor([0, 1]), 3)
    with pytest.raises(PersonalError, match="no adapter rows are set"):
        model(input_ids=ids)
    with pytest.raises(PersonalError, match="not a peft adapter folder"):
        import_peft([tmp_path])
