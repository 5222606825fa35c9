"""Soft prompts and user vectors: they change generation, match a hand-built forward pass,
survive left padding and mixed batches, and train with the per-adapter machinery."""
import pytest
import torch

from personal.config import TrainConfig
from personal.engine import (adapter_rows, adapter_state, attach_prompts, export_peft,
                             generate_mixed, inject_from_peft, inject_stacked_lora, train_stacked)
from personal.engine.toy import left_pad, random_examples, tiny_llama

PROMPTS = [[5, 9, 14, 3, 30], [40, 41], [8, 60, 61, 62, 63, 64, 65]]
L = 3


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _with_prompts(k=3, prefix_len=L, user_vector=True):
    model = tiny_llama(0)
    tables = attach_prompts(model, k, prefix_len=prefix_len, user_vector=user_vector, seed=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        if user_vector:
            tables.user_vector.copy_(torch.randn(tables.user_vector.shape, generator=g))
    return model, tables


@torch.no_grad()
def _greedy_by_hand(model, prompt, steps, prefix=None, vector=None):
    """No cache, no engine: re-run the whole sequence each step with the prefix prepended."""
    ids = list(prompt)
    emb = model.get_input_embeddings()
    for _ in range(steps):
        x = emb(torch.tensor([ids]))
        if vector is not None:
            x = x + vector
        if prefix is not None:
            x = torch.cat([prefix[None], x], dim=1)
        ids.append(int(model(inputs_embeds=x).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_prefix_matches_a_hand_prepended_forward_pass_and_changes_generation():
    model, tables = _with_prompts(user_vector=False)
    prefix = tables.prefix[1].detach()
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        from personal.engine import build_inputs
        with adapter_rows(model, torch.tensor([1])):
            engine = model(**build_inputs(model, ids, torch.ones_like(ids))).logits
        by_hand = model(inputs_embeds=torch.cat([prefix[None], model.get_input_embeddings()(ids)],
                                                1)).logits
    assert torch.allclose(engine, by_hand, atol=1e-5)
    out = generate_mixed(model, ids, torch.ones_like(ids), torch.tensor([1]), 8)
    assert out[0].tolist() == _greedy_by_hand(model, PROMPTS[0], 8, prefix=prefix)
    plain = generate_mixed(model, ids, torch.ones_like(ids), torch.tensor([-1]), 8)
    assert plain[0].tolist() == _greedy_by_hand(model, PROMPTS[0], 8)
    assert out[0].tolist() != plain[0].tolist()


def test_left_padded_mixed_rows_equal_each_row_alone():
    model, tables = _with_prompts()
    rows = [0, 2, -1]
    ids, mask = left_pad(PROMPTS)
    batch = generate_mixed(model, ids, mask, torch.tensor(rows), 8)
    for r, (prompt, k) in enumerate(zip(PROMPTS, rows)):
        prefix = None if k < 0 else tables.prefix[k].detach()
        vector = None if k < 0 else tables.user_vector[k].detach()
        assert batch[r].tolist() == _greedy_by_hand(model, prompt, 8, prefix, vector), r


def test_the_prompt_pass_skips_the_last_layers_work_on_all_but_the_last_position():
    """The last layer only writes keys and values for the prompt, and the last position goes
    through every layer as a decoding step: the first logits and the cache are those of one
    plain pass, and the last layer's MLP never sees the other positions."""
    from personal.engine.generate import _prompt_pass
    from transformers import StaticCache

    model, _ = _with_prompts()
    inject_stacked_lora(model, 3, rank=2, alpha=4)
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "lora_B"):
                layer.lora_B.normal_()
    ids, mask = left_pad(PROMPTS)
    seen = []
    mlps = [layer.mlp for layer in model.model.layers]
    hooks = [m.register_forward_hook(lambda m, a, o, i=i: seen.append((i, a[0].shape[1])))
             for i, m in enumerate(mlps)]
    results = []
    with adapter_rows(model, torch.tensor([0, 2, -1])), torch.no_grad():
        from personal.engine import build_inputs
        inputs = build_inputs(model, ids, mask)
        width = inputs["attention_mask"].shape[1]
        for trimmed in (True, False):
            seen.clear()
            cache = StaticCache(config=model.config, max_cache_len=width + 4)
            if trimmed:
                out = _prompt_pass(model, inputs, "cache", cache, {"logits_to_keep": 1})
                assert seen == [(0, width - 1), (0, 1), (1, 1)]   # last layer: 1 position
            else:
                out = model(**inputs, use_cache=True, cache=cache, logits_to_keep=1)
                assert seen == [(0, width), (1, width)]
            results.append((out.logits[:, -1], [(layer.keys.clone(), layer.values.clone())
                                                 for layer in cache.layers]))
    for h in hooks:
        h.remove()
    (trim, trim_kv), (plain, plain_kv) = results
    assert torch.allclose(trim, plain, atol=1e-5)
    for (k1, v1), (k2, v2) in zip(trim_kv, plain_kv):
        assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)


def test_user_vector_alone_changes_generation():
    model, tables = _with_prompts(prefix_len=0)
    ids = torch.tensor([PROMPTS[2]])
    with_vec = generate_mixed(model, ids, torch.ones_like(ids), torch.tensor([0]), 8)
    without = generate_mixed(model, ids, torch.ones_like(ids), torch.tensor([-1]), 8)
    assert with_vec[0].tolist() != without[0].tolist()
    assert with_vec[0].tolist() == _greedy_by_hand(model, PROMPTS[2], 8,
                                                   vector=tables.user_vector[0].detach())


def test_trained_prefixes_steer_each_users_generation():
    """Adapter k learns to answer token 10 + k; the base model does not."""
    model = tiny_llama(0)
    attach_prompts(model, 2, prefix_len=4, user_vector=True, seed=0)
    data = []
    for k in range(2):
        exs = random_examples(6, seed=30 + k, min_len=4, max_len=6)
        data.append([{"input_ids": ex["input_ids"][:3] + [10 + k] * 3,
                      "labels": [-100] * 3 + [10 + k] * 3} for ex in exs])
    cfg = TrainConfig(lr=0.1, epochs=15, batch_size=3, warmup_frac=0.1, max_grad_norm=1.0,
                      patience=0, seed=0)
    result = train_stacked(model, data, cfg)
    # The random tiny base has small logits, so the loss floor is high; argmax is what moves.
    assert all(a.train_losses[-1] < a.train_losses[0] - 0.4 for a in result.adapters)
    ids, mask = left_pad([[20, 21, 22], [23, 24, 25], [20, 21, 22]])
    out = generate_mixed(model, ids, mask, torch.tensor([0, 1, -1]), 3)
    assert out[0].tolist() == [10] * 3 and out[1].tolist() == [11] * 3
    assert out[2].tolist() != [10] * 3 and out[2].tolist() != [11] * 3


def test_prompt_tables_travel_with_an_exported_adapter(tmp_path):
    model = inject_stacked_lora(tiny_llama(0), 2, rank=2, alpha=4)
    attach_prompts(model, 2, prefix_len=2, user_vector=True, seed=1)
    out = export_peft(model, 1, tmp_path / "a")
    loaded = inject_from_peft(tiny_llama(0), [out])
    for key, value in adapter_state(loaded, 0).items():
        assert torch.equal(value, adapter_state(model, 1)[key]), key


def test_prompt_tables_trained_together_equal_each_trained_alone():
    data = [random_examples(n, seed=40 + k) for k, n in enumerate([4, 7])]
    cfg = TrainConfig(lr=5e-2, epochs=2, batch_size=2, warmup_frac=0.2, weight_decay=0.01,
                      max_grad_norm=0.1, patience=0, seed=2)
    together = tiny_llama(0)
    attach_prompts(together, 2, prefix_len=2, user_vector=True, seed=2)
    train_stacked(together, data, cfg)
    for k in range(2):
        alone = tiny_llama(0)
        attach_prompts(alone, 1, prefix_len=2, user_vector=True, seed=2 + k)
        train_stacked(alone, [data[k]], cfg, adapter_seeds=[2 + k])
        mine, ref = adapter_state(together, k), adapter_state(alone, 0)
        assert mine["prompts.user_vector"].abs().max() > 1e-3      # trained (it starts at 0)
        for key in mine:
            assert torch.allclose(mine[key], ref[key], atol=1e-5, rtol=1e-4), key


def test_a_frozen_zero_lora_stack_is_skipped_and_prefix_training_is_unchanged(monkeypatch):
    """A prefix-only fleet carries a frozen LoRA stack whose B is zero: it adds exactly 0, so
    it is skipped (no dropout, no products), and the prefixes train as if it ran."""
    from personal.engine.stacked_lora import StackedLoRALinear, lora_layers

    def train(skip: bool):
        if not skip:
            monkeypatch.setattr(StackedLoRALinear, "_frozen_zero", lambda self: False)
        model = tiny_llama(0)
        inject_stacked_lora(model, 2, rank=2, alpha=4, dropout=0.5)
        attach_prompts(model, 2, prefix_len=2, seed=3)
        for layer in lora_layers(model):
            layer.lora_A.requires_grad_(False)
            layer.lora_B.requires_grad_(False)
        calls = []
        for layer in lora_layers(model):
            layer.dropout.register_forward_hook(lambda *a: calls.append(1))
        torch.manual_seed(0)
        train_stacked(model, [random_examples(4, 1), random_examples(4, 2)],
                      TrainConfig(lr=5e-2, epochs=2, batch_size=2, patience=0, seed=1))
        monkeypatch.undo()
        return model, [adapter_state(model, k)["prompts.prefix"] for k in range(2)], len(calls)

    _, skipped, calls_skipped = train(skip=True)
    model, ran, calls_ran = train(skip=False)
    assert calls_skipped == 0 and calls_ran > 0
    for a, b in zip(skipped, ran):
        assert torch.equal(a, b)
    # A nonzero frozen B is applied, with or without autograd.
    ids = torch.tensor([PROMPTS[0]])
    with adapter_rows(model, [0]), torch.no_grad():
        before = model(ids).logits
        lora_layers(model)[0].lora_B[0].fill_(0.5)  # in place, as loading does
        assert not torch.allclose(model(ids).logits, before)


def test_lora_and_prompt_tables_train_together_in_either_order():
    for lora_first in (True, False):
        model = tiny_llama(0)
        if lora_first:
            inject_stacked_lora(model, 2, rank=2, alpha=4)
        attach_prompts(model, 2, prefix_len=2, user_vector=True)
        if not lora_first:
            inject_stacked_lora(model, 2, rank=2, alpha=4)
        before = {k: adapter_state(model, k) for k in range(2)}
        train_stacked(model, [random_examples(4, 1), random_examples(4, 2)],
                      TrainConfig(lr=1e-2, epochs=2, batch_size=2, patience=0))
        for k in range(2):
            after = adapter_state(model, k)
            changed = {key for key in after if not torch.equal(after[key], before[k][key])}
            assert changed == set(after), set(after) - changed       # every table trained
        assert not any(p.requires_grad for n, p in model.named_parameters()
                       if "lora_" not in n and "personal_prompts" not in n)


def test_finished_rows_leave_the_batch_and_the_others_decode_as_before(monkeypatch):
    """Rows that meet eos are dropped mid-decoding (from the KV cache, the adapter routing
    and the user vectors); every other row goes on exactly as in the batch without eos."""
    from collections import Counter

    import personal.engine.generate as G
    from personal.engine import load_adapter_state

    model = inject_stacked_lora(tiny_llama(0), 3, rank=2, alpha=4)
    g = torch.Generator().manual_seed(8)
    for k in range(3):
        load_adapter_state(model, k, {key: 0.5 * torch.randn(v.shape, generator=g)
                                      for key, v in adapter_state(model, 0).items()})
    tables = attach_prompts(model, 3, prefix_len=L, user_vector=True, seed=4)
    with torch.no_grad():
        tables.user_vector.copy_(torch.randn(tables.user_vector.shape, generator=g))
    prompts = [PROMPTS[i % 3] + [7 + i] for i in range(12)]
    rows = torch.tensor([i % 4 - 1 for i in range(12)])
    ids, mask = left_pad(prompts)
    free = generate_mixed(model, ids, mask, rows, 10).tolist()  # no eos: no row leaves
    eos = Counter(t for row in free for t in row[1:4]).most_common(1)[0][0]
    kept = []
    real = G._drop_rows
    monkeypatch.setattr(G, "_drop_rows", lambda m, c, keep: kept.append(int(keep.sum()))
                        or real(m, c, keep))
    out = generate_mixed(model, ids, mask, rows, 10, eos_token_id=eos, pad_token_id=0).tolist()
    assert kept and min(kept) < len(prompts)  # rows really left the batch
    for r, want in enumerate(free):
        cut = want.index(eos) + 1 if eos in want else len(want)
        assert out[r][:cut] == want[:cut] and set(out[r][cut:]) <= {0}, r
