"""The layers of DESIGN.md hold: import-linter's contracts (pyproject.toml) are kept, so no
import, at module level or inside a function, goes up a layer or closes a cycle between
packages. The same check runs in CI before the tests (`.ci/run`)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_command_line_starts_without_torch():
    """`personal --help` and the data commands stay fast: importing the CLI loads neither
    torch nor Ray (a light module that reaches for one makes every command ~2 s slower)."""
    code = ("import sys, personal.cli; "
            "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
