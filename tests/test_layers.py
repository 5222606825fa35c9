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
