"""Errors the command line turns into exit code 2 with a message that names the problem."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


class PersonalError(Exception):
    """Bad input or usage: the message names the file, line, field or key at fault."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a command asked for it (`personal serve`): it takes Ctrl-C's
    clean-up path, then the command exits 143 (128 + SIGTERM)."""


@dataclass(frozen=True)
class Problem:
    """One problem found in input data, located as precisely as the input allows."""

    file: str
    line: Optional[int]  # 1-based line number; None when the problem is the whole file
    field: str  # field path, e.g. "sessions[3].messages[1].role"; "" for the whole line
    message: str  # what was expected and what was found

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class DataError(PersonalError):
    """Input data has problems; carries all of them, not just the first."""

    def __init__(self, problems: list[Problem], header: str = "invalid data"):
        self.problems = list(problems)
        lines = [f"{header}: {len(self.problems)} problem(s)"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))
