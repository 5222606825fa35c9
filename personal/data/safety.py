"""Users' files are sacred: where commands may write, and which names may become a path.

- A name that becomes part of a path (a persona id, an adapter or strategy name) must be
  in `NAME_ALPHABET`; `check_name` is the one place that says so, and `child_path` is how
  such a name joins a folder. `../../etc/passwd`, `/abs/path` or `a/../../b` never do.
- A command writes a dataset, a splits file or a run into a folder only when it is new or
  empty, or with `--force`; never onto the data it reads (`check_output_folder`), and a
  splits file only where none is, or with `--force` (`check_output_file`).

    out = check_output_folder(args.out, force=args.force, reads=[args.path])
    folder = child_path(run / "adapters" / "per_user_lora", persona_id, "persona id")
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from personal.errors import PersonalError

NAME_ALPHABET = ("letters A-Z and a-z, digits, '_', '-' and '.', 1 to 128 characters, "
                 "starting with a letter, digit or '_'")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def is_safe_name(name: object) -> bool:
    """Whether `name` may be a file or folder name (see NAME_ALPHABET)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def name_problem(name: object) -> str:
    """Why `name` is not a safe name ('' when it is)."""
    if is_safe_name(name):
        return ""
    return f"{name!r} is not a plain name ({NAME_ALPHABET})"


def check_name(name: object, what: str) -> str:
    """`name` itself, or a PersonalError saying that this `what` cannot become a path."""
    problem = name_problem(name)
    if problem:
        raise PersonalError(f"{what} {problem}: it would become part of a file path")
    return name  # type: ignore[return-value]


def child_path(parent: Path, name: str, what: str) -> Path:
    """`parent / name` for a name that passed `check_name`."""
    return Path(parent) / check_name(name, what)


def _within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_output_folder(out: str | Path, force: bool = False, reads: Sequence[str | Path] = (),
                        what: str = "--out") -> Path:
    """The folder a command may write into: not a file, not one it reads (nor inside one,
    nor holding one), and new or empty unless `force`. Nothing is written here."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PersonalError(f"{what} {out} is a file, not a folder")
    target = out.resolve()
    for source in reads:
        src = Path(source).resolve()
        if _within(target, src) or _within(src, target):
            raise PersonalError(f"{what} {out} is (or holds, or is inside) the input {source}: "
                                "a command never writes onto the data it reads; choose "
                                "another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        names = sorted(p.name for p in out.iterdir())
        raise PersonalError(f"{what} {out} is not empty ({len(names)} entries, e.g. "
                            f"{', '.join(names[:3])}): pass --force to replace what is there")
    return out


def check_output_file(path: str | Path, force: bool = False, what: str = "splits file") -> Path:
    """A file a command may write: not a folder, and new unless `force`."""
    path = Path(path)
    if path.is_dir():
        raise PersonalError(f"{what} {path} is a folder, not a file")
    if path.exists() and not force:
        raise PersonalError(f"{what} {path} exists: pass --force to replace it")
    return path
