"""The engine on random-weight models of real shapes (the weights are not on this machine):
SmolLM2-135M (Llama, 9/3 heads, tied) and Qwen2.5-0.5B (Qwen2, 14/2 heads, q/k/v biases,
151,936 tokens), at 2 layers, tied and untied. An exported adapter gives plain peft's logits
and a mixed batch decodes peft's greedy tokens per row."""
import copy

import pytest
import torch
from peft import PeftModel

from personal.engine import (adapter_rows, adapter_state, export_peft, generate_mixed,
                             inject_stacked_lora, load_adapter_state)
from personal.engine.toy import left_pad, real_shape
from personal.models.core import relative_difference

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPTS = [[5, 9, 14, 3, 30, 77], [40, 41, 1000], [8, 60, 61, 62, 63]]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.slow
@pytest.mark.parametrize("name, tied", [("smollm2-135m", True), ("qwen2.5-0.5b", True),
                                        ("qwen2.5-0.5b", False)])
def test_an_adapter_on_a_real_shape_matches_peft(tmp_path, name, tied):
    original = real_shape(name, num_layers=2, tie_word_embeddings=tied)
    fresh = lambda: copy.deepcopy(original)  # noqa: E731 (a copy: initialising 136M weights is slow)
    stack = inject_stacked_lora(fresh(), 2, rank=4, alpha=8.0, target_modules=TARGETS)
    c = stack.config
    assert c.num_key_value_heads < c.num_attention_heads  # grouped-query attention
    assert (stack.get_output_embeddings().weight.data_ptr()
            == stack.get_input_embeddings().weight.data_ptr()) == tied
    g = torch.Generator().manual_seed(0)
    for k in range(2):  # B starts at zero: set both factors so the adapters matter
        load_adapter_state(stack, k, {n: 0.05 * torch.randn(v.shape, generator=g)
                                      for n, v in adapter_state(stack, 0).items()})
    ids, mask = left_pad(PROMPTS)
    real = mask.bool()
    peft_1 = PeftModel.from_pretrained(fresh(), export_peft(stack, 1, tmp_path / "a1")).eval()
    with torch.no_grad(), adapter_rows(stack, torch.ones(len(PROMPTS), dtype=torch.long)):
        engine = stack(input_ids=ids, attention_mask=mask).logits[real]
    with torch.no_grad():
        reference = peft_1(input_ids=ids, attention_mask=mask).logits[real]
        base = fresh()(input_ids=ids, attention_mask=mask).logits[real]
    # fp32 sums in another order: a relative ~1e-6, far below the adapter's own effect
    assert relative_difference({"l": engine}, {"l": reference}) < 1e-4
    assert relative_difference({"l": base}, {"l": reference}) > 1e-2
    rows = [0, 1, -1]
    mixed = generate_mixed(stack, ids, mask, torch.tensor(rows), 6, eos_token_id=2, pad_token_id=0)
    for r, k in enumerate(rows):
        alone = fresh() if k < 0 else PeftModel.from_pretrained(
            fresh(), export_peft(stack, k, tmp_path / f"b{k}")).eval()
        out = alone.generate(input_ids=torch.tensor([PROMPTS[r]]), max_new_tokens=6,
                             do_sample=False, eos_token_id=2, pad_token_id=0)
        new = out[0, len(PROMPTS[r]):].tolist()
        assert mixed[r, :len(new)].tolist() == new, f"row {r} (adapter {k})"
