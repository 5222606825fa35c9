"""The report renders the study's table and embedded plots from a small synthetic run."""
import base64
import re

import pytest

from personal.eval.metrics import macro_mean
from personal.eval.report import fmt, fmt_criteria, fmt_p, write_report
from personal.eval.statistics import compare, rows_as_records

USERS = [f"persona_{i:03d}" for i in range(8)]
REF = [0.78, 0.80, 0.82, 0.76, 0.79, 0.81, 0.77, 0.83]


def _per_user(scores, device_precision, param_f1):
    return {u: {"emb_sim": s, "device_precision": device_precision, "param_f1": param_f1}
            for u, s in zip(USERS, scores)}


def _run():
    per_user = {
        "unified_lora": _per_user(REF, 0.9, 0.8),
        "per_user_lora": _per_user([s + 0.02 + 0.001 * i for i, s in enumerate(REF)], 0.95, 0.85),
        "base": _per_user([s - 0.2 for s in REF], 0.5, 0.4),
    }
    summary = {name: macro_mean(users) for name, users in per_user.items()}
    comparisons = compare(per_user, "unified_lora", n_boot=200)
    return summary, per_user, comparisons


def _cells(md: str, strategy: str) -> list[str]:
    line = next(l for l in md.splitlines() if l.startswith(f"| {strategy} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_renders_table_and_embedded_plots(tmp_path):
    summary, per_user, comparisons = _run()
    md_path, html_path = write_report(
        summary, per_user, comparisons, tmp_path / "out",
        ablations={"lora rank": [(2, 0.80), (4, 0.82), (8, 0.83)]},
        noise_ceiling={"emb_sim": 0.91, "device_precision": 0.99, "param_f1": 0.97})
    md = md_path.read_text()
    assert ("| strategy | emb sim | seed sd | change vs unified_lora | 95% CI of change "
            "| beats unified_lora | users improved | device precision | parameter F1 "
            "| worst user | worst change | p (Holm) | criteria |") in md
    assert _cells(md, "unified_lora")[:4] == ["unified_lora", "0.7950", "\u2014", "(reference)"]
    row = _cells(md, "per_user_lora")
    ours = comparisons["per_user_lora"]
    assert row[1] == f"{summary['per_user_lora']['emb_sim']:.4f}" == "0.8185"
    assert row[2] == "\u2014"  # one seed: no spread
    assert row[3] == "+0.0235" and row[6] == "100.0%" and row[7] == "0.950"
    assert row[4] == f"[{ours.ci_low:+.4f}, {ours.ci_high:+.4f}]" and row[5] == "yes"
    assert row[8] == "0.850" and row[9] == "0.783" and row[10] == "+0.020"
    assert row[12] == "PASS (4/4)" and row[11] == fmt_p(ours.p_holm)
    base = _cells(md, "base")
    assert base[3] == "-0.2000" and base[5] == "no" and base[6] == "0.0%" and base[9] == "0.560"
    assert base[12] == "FAIL (0/4: improved, mean, worst, p)"
    assert _cells(md, "noise ceiling (alt text)")[1:9] == ["0.9100"] + ["\u2014"] * 5 + [
        "0.990", "0.970"]
    # the summary at the top comes from the numbers
    assert "1 of 2 strategies beat unified_lora: per_user_lora (+0.0235 emb_sim" in md
    assert "- Worse than unified_lora beyond noise: base (-0.2000)." in md
    assert "Passing all four criteria: per_user_lora." in md
    lines = md.splitlines()  # reference first, then the others in summary order
    order = [l.split("|")[1].strip() for l in lines if l.startswith("| ")][2:5]
    assert order == ["unified_lora", "per_user_lora", "base"]

    page = html_path.read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [name for name, _ in images] == ["Per-user delta distribution",
                                           "Per-user emb_sim against unified_lora", "Ablations"]
    assert all(base64.b64decode(data)[:4] == b"\x89PNG" for _, data in images)
    assert "<td>per_user_lora</td>" in page and "PASS (4/4)" in page


def test_report_accepts_flat_comparison_records_and_no_extras(tmp_path):
    summary, per_user, comparisons = _run()
    flat = {r["strategy"]: r for r in rows_as_records(comparisons)}
    md_path, html_path = write_report(summary, per_user, flat, tmp_path)
    md = md_path.read_text()
    assert _cells(md, "per_user_lora")[12] == "PASS (4/4)"
    assert "noise ceiling" not in md and "Ablations" not in html_path.read_text()
    assert html_path.read_text().count("data:image/png;base64,") == 2


def test_report_of_a_reference_only_run(tmp_path):
    per_user = {"unified_lora": _per_user(REF, 0.9, 0.8)}
    summary = {"unified_lora": macro_mean(per_user["unified_lora"])}
    md_path, html_path = write_report(summary, per_user, {}, tmp_path)
    md = md_path.read_text()
    assert _cells(md, "unified_lora")[9] == "0.760"
    assert "Only the reference (unified_lora) was evaluated" in md
    assert "<img" not in html_path.read_text()
    with pytest.raises(ValueError, match="no strategies"):
        write_report({}, {}, {}, tmp_path)


def test_the_summary_changes_when_the_numbers_change(tmp_path):
    summary, per_user, _ = _run()
    per_user["per_user_lora"] = _per_user([s - 0.001 + 0.002 * (i % 2) for i, s in enumerate(REF)],
                                          0.95, 0.85)  # now within noise of the reference
    summary = {name: macro_mean(users) for name, users in per_user.items()}
    comparisons = compare(per_user, "unified_lora", n_boot=200)
    md = write_report(summary, per_user, comparisons, tmp_path, notes=["3 seeds (0, 1, 2)."])[0]
    text = md.read_text()
    assert "No strategy beats unified_lora beyond noise: for none of 2" in text
    assert "Passing all four criteria: none." in text and "3 seeds (0, 1, 2)." in text
    # with costs, a strategy that beats the reference is priced
    comparisons = compare(_run()[1], "unified_lora", n_boot=200)
    costs = {"unified_lora": {"parameters_per_user": 100.0, "train_lane_seconds": 50.0},
             "per_user_lora": {"parameters_per_user": 2048.0, "train_lane_seconds": 150.0}}
    md = write_report(summary, _run()[1], comparisons, tmp_path, costs=costs)[0]
    assert "2,048 parameters per user, 3.0x unified_lora's training time)" in md.read_text()


def test_the_legend_names_the_worst_user_criterion_applied(tmp_path):
    summary, per_user, _ = _run()
    rows = compare(per_user, "unified_lora", n_boot=100, worst_criterion="worst_delta")
    md = write_report(summary, per_user, rows, tmp_path, worst_criterion="worst_delta")[0]
    text = md.read_text()
    assert "the worst-user criterion applied is `worst_delta`" in text
    assert "**worst_delta**: no user's change below -0.02" in text
    assert _cells(text, "base")[12] == "FAIL (0/4: improved, mean, worst_delta, p)"


def test_cell_formatting():
    assert fmt(float("nan")) == "\u2014" and fmt(0.12345) == "0.1235"
    assert fmt(0.01, signed=True) == "+0.0100"
    assert fmt_p(3e-7) == "<0.0001" and fmt_p(0.04321) == "0.0432"
    assert fmt_criteria({"improved": True, "mean": True, "worst": False, "p": True}) == \
        "FAIL (3/4: worst)"


def test_the_report_gives_the_plans_wall_time_and_its_lanes():
    from personal.experiment.reporting import plan_time_lines

    plan = {"total_seconds": 2222.2, "lanes": 2, "units": {"train/a": 3000.0, "eval/a": 1400.0}}
    assert plan_time_lines(plan)[-1] == ("The last `personal run` took 37m02s in 2 lanes "
                                         "(its units' times add up to 1h13m).")
    assert plan_time_lines({**plan, "lanes": 1})[-1] == "The last `personal run` took 37m02s."
    assert plan_time_lines(None) == [] and plan_time_lines({"units": {}}) == []


def test_the_swap_checks_are_a_figure_over_seeds(tmp_path):
    from personal.experiment.reporting import SWAP_PLOT, _swap_plots, swap_shares
    from personal.experiment.runs import Run

    seeds = []
    for seed, (prefix, vector) in enumerate([(0.5, 0.25), (0.75, None)]):
        run = Run(tmp_path / f"seed-{seed}")
        run.write_json("diagnostics/unified_prefix.json",
                       {"strategy": "unified_prefix", "check": "prompt swap",
                        "swap_turns": 4, "changed_share": prefix})
        run.write_json("diagnostics/user_embedding.json",  # no share: not measured
                       {"strategy": "user_embedding", "check": "vector shuffle",
                        "changed_share": vector})
        run.write_json("diagnostics/moe_lora.json", {"strategy": "moe_lora", "rows": []})
        seeds.append(run)
    assert swap_shares(seeds) == {"unified_prefix: prompt swap": [0.5, 0.75],
                                  "user_embedding: vector shuffle": [0.25]}
    assert _swap_plots([Run(tmp_path / "none")]) == []  # no checks: no empty figure
    summary, per_user, comparisons = _run()
    md, html = write_report(summary, per_user, comparisons, tmp_path / "out",
                            extra_plots=_swap_plots(seeds))
    assert SWAP_PLOT in md.read_text()
    page = html.read_text()
    png = re.search(rf'alt="{re.escape(SWAP_PLOT)}" src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(png.group(1)).startswith(b"\x89PNG")
