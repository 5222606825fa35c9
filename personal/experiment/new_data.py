"""A finished run scored on another population: `personal eval RUN --data DIR`.

Every user of DIR is new to the run, whatever their id: people in another dataset are other
people, so no per-user state of the run is ever matched to them by name. They join the run's
data as cold-start users (their split's train and val sessions are what the user "has", to
place them or retrieve from; their test sessions are scored) and each strategy answers them
with its documented cold-start rule. Where a rule needs per-user state (a cluster placement,
a retrieval index over the user's sessions, the selective meta-classifier's choice) the
strategy derives it at predict time from the run's artifacts, which are only read.

Ids of DIR that the run also uses are renamed `new_<id>` (the report lists both), so a
user's predictions can never be routed to a run user's adapter. Results go to
`RUN/evals/<DIR name>/` (or `--out`): predictions, per-user metrics, cost and a report whose
every row is a cold-start row. Data without session context (the cleaned-dialogue layout
has no meta) is prompted as "context unknown", as in any run.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from personal.config import Config
from personal.data.io import read_splits
from personal.data.safety import check_name, name_problem
from personal.data.schema import Dataset, Example, Persona, Split, Splits
from personal.data.splits import make_splits
from personal.data.validate import load_dataset
from personal.errors import PersonalError
from personal.experiment.context import DATA_FILES, Context, prepare_data
from personal.experiment.cost import strategy_cost
from personal.experiment.pipeline import write_evaluation
from personal.experiment.reporting import NEW_DATA_RECORD as RECORD
from personal.experiment.reporting import report_from_run
from personal.experiment.runs import Run, files_fingerprint
from personal.experiment.units import prompt_hash, strategy_units
from personal.strategies.registry import get_strategy, strategy_config

log = logging.getLogger("personal")

EVALS = "evals"
RENAME_PREFIX = "new_"


@dataclass
class NewData:
    """A population joined to a run: its users (renamed where the run uses the id), their
    cold-start splits and the fingerprint of its files."""

    dataset: Dataset
    splits: Splits
    fingerprint: str
    renamed: dict[str, str]
    """Id in DIR -> id in the evaluation, for every user (equal unless renamed)."""


def load_new_data(path: Path, cfg: Config, run_ids: set[str]) -> NewData:
    """DIR's users as cold-start users: DIR's `splits.json` when it has one (train and val
    become what the user has, test is scored), else the config's fractions."""
    if not (path / "sessions.jsonl").is_file():
        raise PersonalError(f"--data {path}: not a dataset folder (no sessions.jsonl; import "
                            "a dialogue file first with `personal data import`)")
    ds = load_dataset(path)
    splits_file = path / "splits.json"
    if splits_file.is_file():
        given = read_splits(splits_file, ds)
        splits = {pid: Split(train=[], val=sorted(sp.train + sp.val), test=list(sp.test),
                             cold_start=True) for pid, sp in given.items()}
    else:
        splits = make_splits(ds, train_frac=cfg.data.train_frac, val_frac=cfg.data.val_frac,
                             cold_start=len(ds.personas), seed=cfg.data.seed)
    ids = [p.persona_id for p in ds.personas]
    clash = sorted(set(ids) & run_ids)
    renamed = {pid: (RENAME_PREFIX + pid if clash else pid) for pid in ids}
    unsafe = [here for here in renamed.values() if name_problem(here)]
    if unsafe:
        raise PersonalError(f"--data {path}: renamed user id {name_problem(unsafe[0])}")
    still = sorted(set(renamed.values()) & run_ids)
    if still:
        raise PersonalError(f"--data {path}: user ids {', '.join(still[:5])} are used by the "
                            "run even after renaming; give DIR's users other ids")
    personas = [dataclasses.replace(p, persona_id=renamed[p.persona_id]) for p in ds.personas]
    files = [path / f for f in DATA_FILES if (path / f).is_file()]
    files += [splits_file] if splits_file.is_file() else []
    return NewData(Dataset(personas), {renamed[p]: sp for p, sp in splits.items()},
                   files_fingerprint(files), renamed)


@dataclass
class NewDataContext(Context):
    """The run's context with a new population joined as cold-start users: only they are
    evaluated, and a strategy routed to another (selective) takes that strategy's
    predictions made earlier in this evaluation."""

    evaluated: list[str] = field(default_factory=list)
    made: dict = field(default_factory=dict)
    """{strategy: {(persona, session, turn): (prompt hash, text)}} made in this evaluation."""

    def eval_personas(self) -> list[str]:
        return list(self.evaluated)

    def recorded_predictions(self, name: str, examples: list[Example]) -> Optional[list[str]]:
        made = self.made.get(name)
        if made is None:
            return None
        out = []
        for e in examples:
            hit = made.get((e.persona_id, e.session_id, e.turn_index))
            if hit is None or hit[0] != prompt_hash(e):
                return None
            out.append(hit[1])
        return out


def run_context(run_path: Path, cfg: Config) -> Context:
    """The finished run's own context, opened read-only (no provenance is appended)."""
    ds, splits, fp = prepare_data(cfg)
    return Context(cfg, Run(run_path), ds, splits, fp)


def joined_context(src: Context, new: NewData) -> NewDataContext:
    """`src` with the new users added to its data; the run's fingerprint is kept (the
    trained units' checks compare it), the new population's is `population`."""
    ctx = NewDataContext(src.cfg, src.run, Dataset(src.dataset.personas + new.dataset.personas),
                         {**src.splits, **new.splits}, src.fingerprint,
                         population=new.fingerprint,
                         evaluated=[p.persona_id for p in new.dataset.personas])
    if "base" in src.__dict__:  # the loaded base is shared, not loaded twice
        ctx.__dict__["base"] = src.__dict__["base"]
    return ctx


def untrained_units(src: Context, name: str) -> list[str]:
    """Units of strategy `name` that the run has not finished with its current inputs."""
    return [u.name for stage in strategy_units(src, name) for u in stage
            if not src.run.unit_done(u.name, u.inputs)]


def output_folder(run_path: Path, data: Path, out: Optional[Path], force: bool) -> Path:
    """Where the evaluation goes; an existing one is replaced only with --force, and only
    when it is an evaluation folder (never a folder of something else)."""
    if out is None:
        name = data.resolve().name
        if name_problem(name):
            raise PersonalError(f"--data {data}: the folder name {name!r} cannot name the "
                                f"output folder; give one with --out")
        out = run_path / EVALS / check_name(name, "data folder name")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise PersonalError(f"{out} exists: pass --force to replace it, or --out elsewhere")
        if not (out / RECORD).is_file():
            raise PersonalError(f"{out} is not an evaluation folder (no {RECORD}); "
                                "--force replaces only those: choose another --out")
        shutil.rmtree(out)
    return out


def check_request(src: Context, names: list[str]) -> None:
    """Every named strategy exists and is trained in the run, before any work starts."""
    problems = []
    for name in names:
        get_strategy(name)
        missing = untrained_units(src, name)
        if missing:
            problems.append(f"{name} (unfinished: {', '.join(missing[:3])})")
    if problems:
        raise PersonalError(f"{src.run.path}: not trained with the run's config: "
                            + "; ".join(problems) + " (finish the run with `personal run` "
                            "or `personal train` first)")


def evaluate_on_data(run_path: Path, cfg: Config, data: Path, names: list[str],
                     out: Optional[Path] = None, force: bool = False) -> Path:
    """Score the run's strategies `names` on DIR's test turns (every user cold-start) into
    the output folder; returns the report's path."""
    src = run_context(run_path, cfg)
    check_request(src, names)
    new = load_new_data(data, cfg, set(src.splits))
    target = output_folder(run_path, data, out, force)
    ctx = joined_context(src, new)
    examples = ctx.examples(cfg.eval.split, ctx.eval_personas())
    if not examples:
        raise PersonalError(f"--data {data}: no {cfg.eval.split} turns to score")
    turns = {p: 0 for p in ctx.eval_personas()}
    for e in examples:
        turns[e.persona_id] += 1
    dest = Run(target)
    for sub in ("predictions", "metrics"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    dest.write_json(RECORD, {"run": str(run_path.resolve()), "data": str(data.resolve()),
                             "data_fingerprint": new.fingerprint,
                             "run_fingerprint": src.fingerprint, "strategies": names,
                             "users": {orig: {"id": here, "test_turns": turns[here],
                                              "cold_start": ctx.splits[here].cold_start}
                                       for orig, here in new.renamed.items()},
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    (target / "config.yaml").write_bytes((run_path / "config.yaml").read_bytes())
    dest.write_json("strategies.json", names)
    for name in names:
        spec = get_strategy(name)
        predict = spec.predictor(ctx, strategy_config(spec, cfg.strategy.get(name)))
        t0 = time.perf_counter()
        texts = predict(examples)
        seconds = time.perf_counter() - t0
        ctx.made[name] = {(e.persona_id, e.session_id, e.turn_index): (prompt_hash(e), t)
                          for e, t in zip(examples, texts)}
        write_evaluation(ctx, name, examples, texts, seconds, out=dest)
        dest.write_json(f"metrics/{name}_cost.json",
                        strategy_cost(src, name, len(examples), seconds))
    return report_from_run(target)
