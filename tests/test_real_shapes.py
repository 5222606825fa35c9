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


@pytest.mark.slow
@pytest.mark.parametrize("name, trims", [("smollm2-135m", True), ("qwen2.5-0.5b", False)])
def test_the_fast_loss_paths_equal_the_plain_loss_on_real_shapes(name, trims):
    """The training loss goes through the fused head (`linear_cross_entropy`) on both shapes,
    and through the last-layer trim only on the Llama one (Qwen2's layers are another
    class: it falls back to one plain pass). Either way: the plain loss and gradients."""
    import torch.nn.functional as F

    from personal.models.last_layer import last_llama_layer
    from personal.models.training import masked_lm_loss

    model = real_shape(name, num_layers=2).train()
    assert (last_llama_layer(model) is not None) == trims
    assert model.config._attn_implementation == "sdpa"  # the trim's other condition
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 5000, (2, 48), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -6:] = ids[:, -6:]  # a reply after a long prompt: what the trim is for
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "position_ids": torch.arange(48).expand(2, 48)}
    fast, n = masked_lm_loss(model, batch)
    fast.backward()
    fast_grads = {k: p.grad.clone() for k, p in model.named_parameters() if "layers.1" in k}
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
    plain = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                            ignore_index=-100)
    plain.backward()
    plain_grads = {k: p.grad for k, p in model.named_parameters() if "layers.1" in k}
    assert n == 12 and torch.allclose(fast, plain, rtol=1e-5)
    # summation order differs (fused chunks, trimmed rows): norm-wise, as in models.core
    assert relative_difference(fast_grads, plain_grads) < 1e-4
