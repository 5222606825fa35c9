"""A run directory: everything a run made, and the bookkeeping that makes re-runs resume.

    runs/<name>/
      config.yaml          resolved config
      run.json             data fingerprint, git revision, package versions, start times
      units/<unit>.json    one record per finished unit of work, with the hash of its inputs
      adapters/<name>/     peft adapter folders
      predictions/<strategy>.jsonl, metrics/<strategy>_per_user.csv|json, summary.json
      report.md, report.html, logs/run.log

A unit (e.g. `train/unified_lora`) is skipped when its record exists with the same input hash
and its outputs are still on disk; any change of its inputs (config, data, upstream unit)
changes the hash and re-runs it.
"""
from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

from personal.config import Config, save_config, to_dict
from personal.errors import PersonalError
from personal.hashing import files_fingerprint, stable_hash  # noqa: F401  (re-exported)

#: Records of a run folder whose children are sub-runs: one run per seed, per learning-curve
#: point (`personal.experiment.seeds`, `personal.experiment.curve`).
SEEDS_FILE, CURVE_FILE = "seeds.json", "curve.json"
SUBRUN_RECORDS = (SEEDS_FILE, CURVE_FILE)

PACKAGES = ("torch", "transformers", "peft", "ray", "sentence-transformers", "scikit-learn",
            "scipy", "numpy", "faiss-cpu", "personal")


def git_revision(cwd: Optional[Path] = None) -> str:
    """The git commit of the code (with `+dirty` when the tree has changes), or `unknown`."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class Run:
    """Handle on `runs/<name>/`."""

    path: Path
    progress: Any = None
    """A PlanProgress that run_unit reports each unit's start and end to (or None)."""

    @classmethod
    def open(cls, path: str | Path, cfg: Config, data_fingerprint: str) -> "Run":
        """Create or reopen a run; records the resolved config and provenance."""
        run = cls(Path(path))
        if run.path.exists() and not run.path.is_dir():
            raise PersonalError(f"--run {run.path} is a file, not a run folder")
        for sub in ("units", "adapters", "predictions", "metrics", "logs"):
            (run.path / sub).mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.path / "config.yaml")
        info = {"data_fingerprint": data_fingerprint, "git_revision": git_revision(),
                "packages": package_versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "platform": platform.platform()}
        previous = run.read_json("run.json") or {}
        info["history"] = previous.get("history", []) + [info["started"]]
        run.write_json("run.json", info)
        _attach_log(run.path / "logs" / "run.log")
        return run

    # --- files -----------------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
        tmp.replace(target)  # atomic: a killed run never leaves half a record
        return target

    def read_json(self, rel: str) -> Any:
        target = self.path / rel
        return json.loads(target.read_text(encoding="utf-8")) if target.is_file() else None

    # --- units -----------------------------------------------------------------------------
    def unit_done(self, unit: str, inputs_hash: str) -> bool:
        """True when `unit` finished with the same inputs and its outputs still exist."""
        record = self.read_json(unit_record(unit))
        if not record or record.get("inputs") != inputs_hash:
            return False
        return all((self.path / o).exists() for o in record.get("outputs", []))

    def run_unit(self, unit: str, inputs_hash: str, fn: Callable[[], dict],
                 outputs: list[str]) -> dict:
        """Run `fn` unless the unit is done with the same inputs, here or in a sibling
        sub-run (`donors`); returns its result record."""
        log = logging.getLogger("personal")
        done = self.unit_done(unit, inputs_hash)
        donor = None if done else self.donor_for(unit, inputs_hash)
        if donor is not None:
            self.adopt_unit(donor, unit)
            log.info("reuse %s from %s (same inputs)", unit, donor.path.name)
        elif done:
            log.info("skip %s (finished, inputs unchanged)", unit)
        if done or donor is not None:
            if self.progress is not None:
                self.progress.end(unit, 0.0, skipped=True)
            return self.read_json(unit_record(unit))["result"]
        if self.progress is not None:
            self.progress.begin(unit)
        else:
            log.info("start %s", unit)
        t0 = time.perf_counter()
        result = fn() or {}
        seconds = time.perf_counter() - t0
        if self.progress is not None:
            self.progress.end(unit, seconds, skipped=False)
        self.record_unit(unit, inputs_hash, outputs, seconds, result)
        log.info("done %s in %.1fs", unit, seconds)
        return result

    def record_unit(self, unit: str, inputs_hash: str, outputs: list[str], seconds: float,
                    result: dict) -> None:
        """Write the record that marks `unit` finished (what `unit_done` checks); for work
        that finishes piece by piece inside one unit, e.g. each adapter of a fleet."""
        self.write_json(unit_record(unit), {
            "unit": unit, "inputs": inputs_hash, "outputs": outputs, "seconds": seconds,
            "result": result, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})

    # --- sub-runs of a seeds or curve run --------------------------------------------------
    def donors(self) -> list["Run"]:
        """Sibling sub-runs of the same seeds or curve run (listed by the parent's record):
        a unit whose inputs do not depend on the seed or the point (the retrieval index, the
        base's evaluation) is computed once and adopted by the others."""
        parent = self.path.parent
        if not any((parent / f).is_file() for f in SUBRUN_RECORDS):
            return []
        return [Run(p) for p in sorted(parent.iterdir())
                if p.is_dir() and p.resolve() != self.path.resolve() and (p / "units").is_dir()]

    def donor_for(self, unit: str, inputs_hash: str) -> Optional["Run"]:
        """A sibling that finished `unit` with the same inputs, if any."""
        return next((d for d in self.donors() if d.unit_done(unit, inputs_hash)), None)

    def adopt_unit(self, donor: "Run", unit: str) -> None:
        """Copy a donor's finished unit here: its outputs, then its record (last, so a copy
        cut short is not taken for finished), with the donor's folder in its result
        rewritten to this one and `reused_from` naming the donor."""
        record = donor.read_json(unit_record(unit))
        for rel in record.get("outputs", []):
            src, dst = donor.path / rel, self.path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
        text = json.dumps(record["result"]).replace(str(donor.path.resolve()),
                                                    str(self.path.resolve()))
        self.write_json(unit_record(unit), {**record, "result": json.loads(text),
                                            "reused_from": donor.path.name})

    def unit_result(self, unit: str) -> Optional[dict]:
        """The result of a finished unit's record (None: no record)."""
        record = self.read_json(unit_record(unit))
        return None if record is None else record["result"]

    def unit_seconds(self) -> dict[str, float]:
        """Wall time of every finished unit (for the report and the issue notes)."""
        out = {}
        for f in sorted((self.path / "units").glob("*.json")):
            rec = json.loads(f.read_text(encoding="utf-8"))
            out[rec["unit"]] = rec["seconds"]
        return out


def run_subruns(cfg: Config, run_path: str | Path, points: dict[str, Config], record_file: str,
                record: dict, execute: Callable[[Config, Path], Path]) -> None:
    """The folder of a run over an axis (seeds, training sessions): its config, the record
    naming its points (`record_file`, one of SUBRUN_RECORDS), then `execute(point_cfg,
    RUN/<name>)` for each point in order. Refuses a folder that holds a single run (its
    units would be mixed in)."""
    root = Path(run_path)
    if root.exists() and not root.is_dir():
        raise PersonalError(f"--run {root} is a file, not a run folder")
    if (root / "units").is_dir():
        raise PersonalError(f"--run {root} holds a single-seed run; give the seeds or curve "
                            "run its own folder")
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    Run(root).write_json(record_file, record)
    for name, point_cfg in points.items():
        logging.getLogger("personal").info("%s: %s", record_file.split(".")[0], root / name)
        execute(point_cfg, root / name)


def subrun_folders(run_path: str | Path, record_file: str, key: str,
                   name: Callable[[int], str]) -> dict[int, Path]:
    """{point: sub-run folder} from the record `run_subruns` wrote (its integer points under
    `key`), or {} when there is none. Folder names are rebuilt from the integers by `name`,
    never taken from the file."""
    record = Run(Path(run_path)).read_json(record_file)
    if not record:
        return {}
    return {int(p): Path(run_path) / name(int(p)) for p in record[key]}


def _safe(unit: str) -> str:
    return unit.replace("/", "__")


def unit_record(unit: str) -> str:
    """The run-relative path of a unit's record."""
    return f"units/{_safe(unit)}.json"


def console_log(quiet: bool) -> None:
    """Progress on stderr: the `personal` logger's INFO lines, or only warnings when
    `quiet`. The quiet filter sits on the console handler, so the run's log file (see
    `_attach_log`) still gets every line."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    log = logging.getLogger("personal")
    log.handlers = [h for h in log.handlers if not isinstance(h, logging.StreamHandler)
                    or isinstance(h, logging.FileHandler)] + [handler]
    log.propagate = False  # libraries that configure the root logger would print it twice
    log.setLevel(logging.INFO)


def _attach_log(path: Path) -> None:
    """Log the `personal` logger to the run's log file (once per file)."""
    log = logging.getLogger("personal")
    log.setLevel(logging.INFO)
    if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in log.handlers):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


def config_section_hash(cfg: Config, *sections: str) -> str:
    """Hash of the named config sections (what a unit's result depends on)."""
    d = to_dict(cfg)
    return stable_hash({s: d[s] for s in sections})
