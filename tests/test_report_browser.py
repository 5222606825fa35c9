"""The report in a real browser: headless Chromium decodes and lays out every plot
(scripts/check_report.py). Needs Chromium on PATH (`apt-get install chromium`)."""
import importlib.util
from pathlib import Path

import pytest

from personal.eval.metrics import macro_mean
from personal.eval.report import write_report
from personal.eval.statistics import compare

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report.py"
spec = importlib.util.spec_from_file_location("check_report", SCRIPT)
check_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_report)

pytestmark = pytest.mark.skipif(check_report.find_browser() is None,
                                reason="no Chromium on PATH (apt-get install chromium)")


def _report(tmp_path) -> Path:
    users = [f"persona_{i:03d}" for i in range(6)]
    per_user = {name: {u: {"emb_sim": 0.7 + shift + 0.01 * i, "device_precision": 0.9,
                           "param_f1": 0.8} for i, u in enumerate(users)}
                for name, shift in (("unified_lora", 0.0), ("hybrid_lora", 0.02))}
    summary = {n: macro_mean(u) for n, u in per_user.items()}
    write_report(summary, per_user, compare(per_user, "unified_lora", n_boot=50), tmp_path,
                 ablations={"lora rank": [(2, 0.7), (4, 0.72)]})
    return tmp_path / "report.html"


def test_every_plot_of_the_report_is_visible_in_chromium(tmp_path):
    page = _report(tmp_path)
    images = check_report.probe_images(page, check_report.find_browser())
    assert [i["alt"] for i in images] == ["Per-user delta distribution",
                                          "Per-user emb_sim against unified_lora", "Ablations"]
    assert check_report.invisible(images) == []
    assert check_report.main([str(tmp_path), "--screenshot", str(tmp_path / "shot.png")]) == 0
    assert (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG"


def test_a_broken_plot_is_named(tmp_path):
    page = _report(tmp_path)
    text = page.read_text()
    start = text.index('alt="Ablations" src="data:image/png;base64,') + len(
        'alt="Ablations" src="data:image/png;base64,')
    page.write_text(text[:start] + "AAAA" + text[start + 40:])  # not a PNG any more
    images = check_report.probe_images(page, check_report.find_browser())
    assert check_report.invisible(images) == ["Ablations"]
    assert check_report.main([str(tmp_path)]) == 1
