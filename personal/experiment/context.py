"""What every strategy sees: the config, the run, the data, its examples and the base model.

Data preparation lives here too: on the embedded default a missing data folder is simulated
(loudly), splits are made once and written next to the data, and the data fingerprint (bytes of
the three files + splits) keys every cached result.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional

from personal.config import Config, DataConfig
from personal.data.examples import build_examples
from personal.data.io import read_splits, write_splits
from personal.data.schema import Dataset, Example, Splits
from personal.data.splits import cold_start_count, make_splits
from personal.data.synth import write_synth
from personal.data.validate import load_dataset
from personal.errors import PersonalError
from personal.experiment.runs import Run, files_fingerprint, stable_hash
from personal.experiment.units import recorded_predictions
from personal.models.base import cache_key, load_base
from personal.models.base import data_fingerprint as background_fingerprint
from personal.models.chat import PromptFormat

log = logging.getLogger("personal")

DATA_FILES = ("characters.jsonl", "routines.jsonl", "sessions.jsonl")


def ensure_population(path: str | Path, cfg: Config, population: str) -> Path:
    """The data folder; when missing and `data.simulate` is on, simulate it there first."""
    path = Path(path)
    if (path / "sessions.jsonl").is_file():
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "a file" if not path.is_dir() else "no sessions.jsonl"
        raise PersonalError(f"{path}: not a dataset folder ({what})")
    field = "path" if population == "eval" else "background_path"
    default = Path(getattr(DataConfig(), field))
    if cfg.data.simulate is False:
        raise PersonalError(f"{path}: data folder not found (data.simulate=false)")
    if cfg.data.simulate is None and path.resolve() != default.resolve():
        raise PersonalError(f"data.{field}={path}: no such data folder (only the default "
                            f"{default} is simulated when missing; make this one with "
                            f"`personal data synth --out {path}`, or set data.simulate=true)")
    users = cfg.data.users if population == "eval" else cfg.data.background_users
    log.warning("%s not found: simulating %d %s users x %d sessions (seed %d) into it",
                path, users, population, cfg.data.sessions, cfg.data.seed)
    write_synth(path, users=users, sessions=cfg.data.sessions, seed=cfg.data.seed,
                population=population)
    return path


def load_splits(cfg: Config, ds: Dataset, data_path: Path) -> tuple[Splits, Path]:
    """The configured splits file, else `<data>/splits.json` (made from the config if missing)."""
    target = Path(cfg.data.splits) if cfg.data.splits else data_path / "splits.json"
    cold = cold_start_count(cfg.data.cold_start, len(ds.personas))
    if target.is_file():
        splits = read_splits(target, ds)
        held = sum(sp.cold_start for sp in splits.values())
        # a splits file made next to the data follows the config; a named one is taken as is
        if not cfg.data.splits and held != cold:
            raise PersonalError(
                f"{target}: holds {held} cold-start users, but data.cold_start asks for "
                f"{cold}{' (the default)' if cfg.data.cold_start is None else ''}; delete the "
                f"file to remake the splits, set data.cold_start={held}, or name it with "
                f"data.splits={target} to use it as it is")
        return splits, target
    if cfg.data.splits:
        raise PersonalError(f"{target}: splits file not found")
    splits = make_splits(ds, train_frac=cfg.data.train_frac, val_frac=cfg.data.val_frac,
                         cold_start=cold, seed=cfg.data.seed)
    write_splits(splits, target)
    log.info("wrote %s", target)
    return splits, target


def prepare_data(cfg: Config) -> tuple[Dataset, Splits, str]:
    """The run's dataset, its splits (capped by `data.max_train_sessions`) and the data
    fingerprint that keys every cached result: the same on the driver and on every worker."""
    data_path = ensure_population(cfg.data.path, cfg, "eval")
    ds = load_dataset(data_path)
    splits, splits_path = load_splits(cfg, ds, data_path)
    fp = data_fingerprint(data_path, splits_path)
    if cfg.data.max_train_sessions:
        splits = cap_train_sessions(splits, cfg.data.max_train_sessions)
        fp = stable_hash(fp, "max_train_sessions", cfg.data.max_train_sessions)
    return ds, splits, fp


def cap_train_sessions(splits: Splits, n: int) -> Splits:
    """Each user's `n` most recent training sessions (the learning-curve axis); the rest of
    the split is unchanged, so every point of a curve is scored on the same test turns."""
    return {pid: dataclasses.replace(sp, train=sp.train[-n:]) for pid, sp in splits.items()}


def data_fingerprint(data_path: Path, splits_path: Path) -> str:
    return files_fingerprint([data_path / f for f in DATA_FILES] + [splits_path])


@dataclass
class Context:
    """Shared state of one run; the base model is loaded once, on first use."""

    cfg: Config
    run: Run
    dataset: Dataset
    splits: Splits
    fingerprint: str
    _examples: dict = field(default_factory=dict)
    pretrain: bool = True
    """May `base` pretrain the built-in base when it is not cached? A lane of the concurrent
    executor turns this off outside `base/prepare`, so a unit that reaches for the base
    before it is ready fails loudly instead of pretraining a second copy."""
    fleet_backend: Optional[Callable] = None
    """Where fleets of adapters train: None in this process; the Ray executor sets Ray
    Train's (`personal.distributed.fleet.ray_backend`), so strategies never import Ray."""
    population: str = ""
    """Fingerprint of a population the run never saw, joined to the run's data as cold-start
    users by `personal eval RUN --data DIR` (`experiment.new_data`); empty in a run. Per-user
    state a strategy derives at predict time (a retrieval index, a cluster placement) is
    keyed by it, so two such populations never share a cached file."""

    @classmethod
    def create(cls, cfg: Config, run_path: str | Path) -> "Context":
        ds, splits, fp = prepare_data(cfg)
        return cls(cfg, Run.open(run_path, cfg, fp), ds, splits, fp)

    def examples(self, split: str, personas: Optional[list[str]] = None) -> list[Example]:
        """Examples of one split (cached), optionally for some personas only."""
        if split not in self._examples:
            self._examples[split] = build_examples(
                self.dataset, self.splits, split=split,
                history_messages=self.cfg.data.history_messages)
        out = self._examples[split]
        if personas is not None:
            keep = set(personas)
            out = [e for e in out if e.persona_id in keep]
        return out

    def eval_personas(self) -> list[str]:
        """Users evaluated: all (or the first `eval.max_users` for smoke runs)."""
        ids = [p.persona_id for p in self.dataset.personas]
        return ids[: self.cfg.eval.max_users] if self.cfg.eval.max_users else ids

    def characters(self) -> dict[str, Optional[str]]:
        return {p.persona_id: p.character for p in self.dataset.personas}

    @cached_property
    def base(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the base, pretraining the built-in one if not cached."""
        background = None
        if self.cfg.model.base == "tiny":
            # the folder, not a loaded Dataset: a cache hit then costs one hash of its bytes
            background = ensure_population(self.cfg.data.background_path, self.cfg, "background")
        return load_base(self.cfg, background=background, allow_pretrain=self.pretrain,
                         progress=self.progress)

    @cached_property
    def base_key(self) -> str:
        """Identity of the base model (for unit input hashes): the built-in base's cache key
        (config + background fingerprint), or the HF name or resolved local path. Never a
        path as written: the Ray executor makes paths absolute, `personal train` keeps them
        as given, and a run must resume under either. Computed once per Context: hashing
        the background's bytes took 87 ms, and a fleet asks once per adapter (200 times)."""
        if self.cfg.model.base != "tiny":
            base = Path(self.cfg.model.base)
            name = str(base.resolve()) if base.exists() else self.cfg.model.base
            return f"{name}|{self.cfg.model.dtype}"
        bg = ensure_population(self.cfg.data.background_path, self.cfg, "background")
        return f"tiny-{cache_key(self.cfg, background_fingerprint(bg))}"

    def training_personas(self) -> list[str]:
        """Users whose data may be trained on or early-stopped on (not cold-start users)."""
        return [pid for pid, sp in self.splits.items() if not sp.cold_start]

    def prompt_format(self, extra_context=None):
        """The run's one chat format (history length, max length, optional character)."""
        return PromptFormat.from_config(self.cfg, self.characters(), extra_context)

    def recorded_predictions(self, name: str, examples: list[Example]) -> Optional[list[str]]:
        """Strategy `name`'s predictions for `examples` from its finished evaluation in this
        run, when they are current (`experiment.units.recorded_predictions`); else None."""
        return recorded_predictions(self, name, examples)

    @property
    def progress(self) -> bool:
        """Progress bars on, unless the command ran with --quiet."""
        return os.environ.get("PERSONAL_QUIET") != "1"
