"""Config system: defaults, YAML that lists only changes, dotted overrides, unknown keys."""
import pytest

from personal.config import Config, ConfigError, load_config, save_config


def test_defaults_come_from_dataclasses():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.train_frac == 0.6 and cfg.lora.rank == 8


def test_yaml_lists_only_changes_and_overrides_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.0005\nlora:\n  rank: 4\n")
    cfg = load_config(f, ["lora.rank=16", "train.epochs=1", "lora.target_modules=[q_proj]",
                          "ray.address=null", "strategy.k=5"])
    assert cfg.train.lr == 0.0005          # from the file
    assert cfg.lora.rank == 16             # the override wins over the file
    assert cfg.train.epochs == 1.0 and isinstance(cfg.train.epochs, float)
    assert cfg.lora.target_modules == ["q_proj"]
    assert cfg.ray.address is None
    assert cfg.strategy == {"k": 5}        # free-form strategy options
    assert cfg.train.batch_size == Config().train.batch_size  # untouched default


def test_scientific_notation_override_is_a_number():
    assert load_config(None, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=1", "train.lrr"),
    ("nosuch.key=1", "nosuch.key"),
    ("lora.rank=abc", "lora.rank"),
    ("model.include_character=maybe", "model.include_character"),
    ("train.lr", "key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "bad.yaml" in str(err.value) and "train.learning_rate" in str(err.value)


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["lora.rank=2", "data.cold_start=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("override,message", [
    ("lora.rank=0", "lora.rank must be at least 1, got 0"),
    ("lora.rank=-1", "lora.rank must be at least 1, got -1"),
    ("lora.dropout=1.0", "lora.dropout must be in [0, 1), got 1.0"),
    ("train.batch_size=0", "train.batch_size must be at least 1, got 0"),
    ("train.lr=0", "train.lr must be above 0, got 0.0"),
    ("train.min_steps=-5", "train.min_steps must be at least 0, got -5"),
    ("eval.split=bogus", "eval.split must be one of train, val, test, got 'bogus'"),
    ("generation.max_new_tokens=0", "generation.max_new_tokens must be at least 1, got 0"),
    ("data.val_frac=0.5", "data.train_frac + data.val_frac must be at most 1"),
    ("ray.lanes=0", "ray.lanes must be at least 1, got 0"),
    ("model.num_heads=5", "model.hidden_size (128) must be a multiple of model.num_heads (5)"),
])
def test_a_value_out_of_range_is_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_a_yaml_value_out_of_range_is_refused_too(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lora:\n  rank: 0\n")
    with pytest.raises(ConfigError, match="bad.yaml: lora.rank must be at least 1, got 0"):
        load_config(f)
