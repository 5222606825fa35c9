"""Base model loading: the built-in base is pretrained once, cached by config + data and reused;
Hugging Face models load only from disk, with a clear error when they are not there."""
import dataclasses
import json

import pytest
import torch

import personal.models.pretrain as pretrain_module
from personal.config import Config
from personal.data.io import write_dataset
from personal.data.schema import Dataset, Message, Persona, Session
from personal.errors import PersonalError
from personal.models.base import cache_key, data_fingerprint, load_base
from personal.engine.generate import generate
from personal.models.pretrain import pretrain_base


ASKS = ["Set the lights to {} percent please.", "Turn the TV volume to {}.",
        "Make the speaker volume {} please."]
REPLIES = ["I've set the lights to {}% for you.", "The TV volume is now {}.",
           "The speaker volume is set to {}."]
EVENING = {"time_of_day": "evening", "day_of_week": "weekday", "sun_phase": "after_sunset",
           "weather": "rainy", "outdoor_temp": "cold"}


def background():
    """3 personas x 8 sessions of two exchanges each: a toy background population."""
    personas = []
    for p in range(3):
        sessions = []
        for s in range(8):
            k, v = (p + s) % 3, 10 * (s + 1)
            messages = [Message("user", ASKS[k].format(v)),
                        Message("assistant", REPLIES[k].format(v)),
                        Message("user", "Thanks."), Message("assistant", "You're welcome.")]
            meta = dict(EVENING) if s % 2 else None
            sessions.append(Session(s, meta, messages))
        personas.append(Persona(f"persona_{p:03d}", f"Person {p} likes music.", [], sessions))
    return Dataset(personas)


def tiny_cfg(tmp_path, **model_changes):
    cfg = Config()
    sizes = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                 vocab_size=400, max_seq_len=128, cache_dir=str(tmp_path / "cache"))
    model = dataclasses.replace(cfg.model, **{**sizes, **model_changes})
    pre = dataclasses.replace(cfg.pretrain, epochs=3.0, batch_size=8, lr=5e-3)
    data = dataclasses.replace(cfg.data, background_path=str(tmp_path / "background"))
    return dataclasses.replace(cfg, model=model, pretrain=pre, data=data)


@pytest.fixture
def count_training(monkeypatch):
    calls = []
    real = pretrain_module.train_loop

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "train_loop", counting)
    return calls


def test_tiny_base_is_pretrained_once_then_loaded_from_the_cache(tmp_path, count_training):
    cfg, ds = tiny_cfg(tmp_path), background()
    with pytest.raises(PersonalError, match="personal base pretrain"):
        load_base(cfg, ds)  # not cached, and pretraining was not allowed
    model, tok = load_base(cfg, ds, allow_pretrain=True, progress=False)
    assert len(count_training) == 1
    (folder,) = (tmp_path / "cache").iterdir()
    meta_file = folder / "meta.json"
    stamp = meta_file.stat().st_mtime_ns
    again, _ = load_base(cfg, ds, allow_pretrain=True, progress=False)
    assert pretrain_base(cfg, ds, progress=False) == folder
    assert len(count_training) == 1 and meta_file.stat().st_mtime_ns == stamp
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))
    meta = json.loads(meta_file.read_text())
    assert meta["data_fingerprint"] == data_fingerprint(ds)
    assert meta["config"]["model"]["hidden_size"] == 32
    first, last = meta["val_losses"][0][1], meta["val_losses"][-1][1]
    assert last < first - 1.0  # it learned the world on held-out dialogues
    assert tok.chat_template and tok.eos_token == "<|end|>"


def test_cache_key_follows_architecture_pretraining_and_data_only(tmp_path):
    cfg, fp = tiny_cfg(tmp_path), data_fingerprint(background())
    key = cache_key(cfg, fp)
    wider = tiny_cfg(tmp_path, hidden_size=64)
    slower = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, lr=1e-4))
    assert len({key, cache_key(wider, fp), cache_key(slower, fp), cache_key(cfg, "0" * 64)}) == 4
    # where and how it runs later does not change what pretraining produced
    assert cache_key(tiny_cfg(tmp_path, dtype="bfloat16", include_character=True), fp) == key


def test_a_dataset_and_the_folder_it_was_written_to_share_a_fingerprint(tmp_path):
    ds = background()
    write_dataset(ds, tmp_path / "bg")
    assert data_fingerprint(tmp_path / "bg") == data_fingerprint(ds)
    ds.personas[0].sessions[0].messages[1].text = "Changed."
    assert data_fingerprint(ds) != data_fingerprint(tmp_path / "bg")


def test_load_base_finds_the_cache_from_the_background_folder(tmp_path, count_training):
    cfg, ds = tiny_cfg(tmp_path), background()
    with pytest.raises(PersonalError, match="no background data"):
        load_base(cfg)
    write_dataset(ds, cfg.data.background_path)
    load_base(cfg, allow_pretrain=True, progress=False)  # reads the folder and pretrains
    model, tok = load_base(cfg)  # fingerprint of the folder's files: the same cache
    assert pretrain_base(cfg, ds, progress=False) == pretrain_base(cfg, cfg.data.background_path)
    assert len(count_training) == 1 and model.config.hidden_size == 32


def test_missing_hugging_face_model_is_a_clear_offline_error(tmp_path):
    cfg = Config()
    for name in ("no-such-org/no-such-model-4f2a", str(tmp_path / "not-here")):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, base=name))
        with pytest.raises(PersonalError, match="not available offline") as err:
            load_base(cfg)
        assert name in str(err.value)


def test_a_local_hugging_face_folder_loads_with_its_own_template(tmp_path):
    cfg, ds = tiny_cfg(tmp_path), background()
    model, tok = load_base(cfg, ds, allow_pretrain=True, progress=False)
    model.save_pretrained(tmp_path / "hf"), tok.save_pretrained(tmp_path / "hf")
    hf_model_cfg = dataclasses.replace(cfg.model, base=str(tmp_path / "hf"))
    hf_cfg = dataclasses.replace(cfg, model=hf_model_cfg)
    hf_model, hf_tok = load_base(hf_cfg)
    assert hf_tok.chat_template == tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "Turn the TV volume to 30."}],
                                     tokenize=False, add_generation_prompt=True)
    gen = dataclasses.replace(cfg.generation, max_new_tokens=20)
    assert generate(hf_model, hf_tok, [prompt], gen) == generate(model, tok, [prompt], gen)


def test_unknown_device_or_dtype_is_named_when_the_config_is_built(tmp_path):
    # refused by the config itself, before any model is loaded or pretrained
    with pytest.raises(PersonalError, match="model.dtype must be one of float32, bfloat16, "
                                           "float16, got 'float8'"):
        tiny_cfg(tmp_path, dtype="float8")
    with pytest.raises(PersonalError, match="model.device must be cpu, mps, cuda or cuda:N, "
                                           "got 'tpu-9'"):
        tiny_cfg(tmp_path, device="tpu-9")


def test_base_cache_dir_names_the_folder_load_base_uses(tmp_path):
    from personal.models.base import base_cache_dir

    cfg, ds = tiny_cfg(tmp_path), background()
    expected = base_cache_dir(cfg, ds)
    assert not expected.exists()
    load_base(cfg, ds, allow_pretrain=True, progress=False)
    assert (expected / "meta.json").is_file() and (expected / "config.json").is_file()
