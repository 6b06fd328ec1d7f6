"""`eseg report`: the paper's tables beside measured values, in Markdown, CSV and LaTeX."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from eseg_cli.analysis import ablate, paper, report
from eseg_cli.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ESEG_CACHE_DIR", str(tmp_path / "cache"))  # empty: nothing measured yet


# final val mIoU per Table 8 cell and seed 0, 1, 2 of a made-up protocol run; the paired differences are
# b1-bifpn - b1-deeplab-os16 = 1.0, 0.8, 1.2 (holds), b1-deeplab-os16 - b1-deeplab-os32 = -0.5, 1.2, -0.7
# (inconclusive), r50-bifpn - r50-deeplab-os16 = -1.0, -1.1, -0.9 (reversed)
VALUES = {"b1-bifpn": [56.0, 57.0, 58.5], "b1-deeplab-os16": [55.0, 56.2, 57.3],
          "b1-deeplab-os32": [55.5, 55.0, 58.0], "r50-bifpn": [50.0, 51.0, 52.0],
          "r50-deeplab-os16": [51.0, 52.1, 52.9], "r50-deeplab-os32": [49.0, 50.0, 51.0]}
PROTOCOL = {"dataset": "synthetic", "steps": 1500, "protocol": "protocol v1", "protocol_steps": 1500}
MEASURED = "mIoU measured, synthetic proxy (protocol v1), 3 seeds, 1500 steps, same ranking at step 1250"


def fake_results(folder, miou=True):
    """An `eseg ablate` results folder with made-up measurements of every Table 8 cell (3 seeds of a protocol run,
    and a later 40-step smoke run that must never show) and ESeg scale."""
    rows = []
    for seed in range(3):
        for i, c in enumerate(ablate.cells_for("decoder")):
            v = VALUES[c.name][seed] if miou else None
            rows.append({"ablation": "decoder", "cell": c.name, "label": c.label, "model": c.model,
                         "model_kwargs": c.kwargs, "resolution": "1024x2048", "num_classes": 19,
                         "params": 1e6 * (i + 1), "flops": 1e10 * (i + 1), "flops_conv": 0.9e10 * (i + 1),
                         "miou": v, "final_miou": v, "best_miou": v + 5 if miou else None, "prev_miou": v,
                         "prev_step": 1250,
                         "seed": seed, "pixacc": 90.0, "train": PROTOCOL if miou else None, "common_kwargs": None,
                         "finished_at": f"2026-12-0{seed + 1}"})
    if miou:
        rows.append(dict(rows[0], seed=0, final_miou=99.0, miou=99.0, finished_at="2027",
                         train={"dataset": "synthetic", "steps": 40, "overrides": {"crop_size": [128, 128]}}))
    for name in ("eseg-lite-s", "eseg-lite-m", "eseg-lite-l", "eseg-m", "eseg-l"):
        rows.append({"ablation": "other", "cell": "x", "model": name, "model_kwargs": {}, "resolution": "1024x2048",
                     "num_classes": 19, "params": 2e6, "flops": 4e10, "flops_conv": 3.9e10})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def expected_mean_std(cell):
    v = np.array(VALUES[cell])
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def test_no_runs_no_measuring_keeps_every_paper_row(tmp_path):
    t = report.build_tables(measure_missing=False)
    assert list(t["table4"]["Model"]) == list(paper.load("table4")["model"])  # every peer row, in order
    assert list(t["table5"]["Model"]) == list(paper.load("table5")["model"])
    assert len(t["table3"]) == 6 and len(t["table8"]) == 6
    assert t["table8"]["FLOPs B (total)"].isna().all()  # nothing cached, nothing measured
    assert t["table4"].loc[t["table4"].Model == "SegFormer-B5", "FLOPs B (paper)"].item() == 1460


def test_ablation_results_fill_table8_and_the_measured_columns(tmp_path):
    t = report.build_tables([fake_results(tmp_path / "abl")], measure_missing=False)
    t8 = t["table8"]
    # the FINAL mIoU (not the best validation), mean ± std over seeds, last, under a header naming the dataset,
    # protocol, seeds and schedule; the later 40-step smoke run is not shown at all
    assert list(t8.columns)[-1] == MEASURED and list(t8.columns)[2] == "mIoU (paper)"
    assert list(t8[MEASURED]) == [expected_mean_std(c) for c in VALUES] and "99" not in " ".join(t8[MEASURED])
    assert list(t8["FLOPs B (total)"]) == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert t8["Δ FLOPs % (total)"][0] == round(100 * (10 - 34.5) / 34.5, 1)
    assert "Δ mIoU" not in t8  # trained on synthetic data: not comparable with Cityscapes
    # ESeg-S's measurement (the b1-bifpn cell) fills Tables 3 and 4 too
    t4 = t["table4"].set_index("Model")
    assert t4.loc["ESeg-S", "FLOPs B (total)"] == 10.0 and t4.loc["ESeg-M", "Params M (measured)"] == 2.0
    assert pd.isna(t4.loc["HRNetV2-W48", "FLOPs B (total)"])
    assert t["table3"].set_index("Model").loc["ESeg-Lite-S", "FLOPs B (conv)"] == 39.0


def test_eval_json_fills_cityscapes_and_ade20k_miou(tmp_path):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "city.json").write_text(json.dumps(
        {"model_config": {"name": "eseg-s", "num_classes": 19}, "dataset": "cityscapes", "mIoU": 70.0,
         "pixAcc": 95.0}))
    (tmp_path / "ev" / "ade.json").write_text(json.dumps(
        {"model": "eseg-m", "dataset": "ade20k", "metrics": {"mIoU": 40.0, "pixAcc": 80.0}}))
    (tmp_path / "ev" / "tiny.json").write_text(json.dumps(  # a tiny test model is not ESeg-S
        {"model_config": {"name": "eseg-s", "width": 0.25}, "dataset": "cityscapes", "mIoU": 99.0}))
    t = report.build_tables([tmp_path / "ev"], measure_missing=False)
    t4 = t["table4"].set_index("Model")
    assert t4.loc["ESeg-S", "mIoU (measured)"] == 70.0 and t4.loc["ESeg-S", "Δ mIoU"] == -10.1
    t5 = t["table5"].set_index("Model")
    assert t5.loc["ESeg-M", "mIoU (measured)"] == 40.0 and t5.loc["ESeg-M", "Δ pixAcc"] == -1.3


def test_written_files_hold_the_tables(tmp_path):
    tables = report.build_tables([fake_results(tmp_path / "abl")], measure_missing=False)
    files = report.write_tables(tables, tmp_path / "out")
    assert len(files) == 16  # Tables 3, 4, 5, 8 and the claims, 3 formats each, and tables.md
    back = pd.read_csv(tmp_path / "out" / "tables" / "table8.csv")
    pd.testing.assert_frame_equal(back, tables["table8"], check_dtype=False)
    md = (tmp_path / "out" / "tables" / "table4.md").read_text()
    lines = md.splitlines()
    assert len([ln for ln in lines if ln.startswith("|")]) == 2 + 21
    row = next(ln for ln in lines if ln.startswith("| Naive-Student"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["Naive-Student", "80.7"] and "3246.0" in cells  # fixed decimals: 3246 -> 3246.0
    tex = (tmp_path / "out" / "tables" / "table8.tex").read_text()
    assert r"$\Delta$ FLOPs \% (total)" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert "-71.0" in tex and r"\resizebox{\textwidth}{!}" in tex  # 11 columns: scaled to the page


def test_every_column_has_fixed_decimals():
    df = pd.DataFrame({"Model": ["a", "b"], "mIoU (paper)": [80.0, 19.74], "Params M (measured)": [20.0, 1.234],
                       "Δ mIoU": [-1.0, 2.26], "Decoder channels": [64.0, 96.0], "x": [None, 1.0]})
    shown = report.format_frame(df)
    assert list(shown["mIoU (paper)"]) == ["80.0", "19.7"]
    assert list(shown["Params M (measured)"]) == ["20.00", "1.23"]
    assert list(shown["Δ mIoU"]) == ["-1.0", "+2.3"]
    assert list(shown["Decoder channels"]) == ["64", "96"] and list(shown["x"]) == ["-", "1.00"]
    first = [c.strip() for c in report.to_markdown(df).splitlines()[2].strip("|").split("|")]
    assert first == ["a", "80.0", "20.00", "-1.0", "64", "-"]


def test_terminal_tables_are_narrow_unless_wide(tmp_path):
    from rich.console import Console

    tables = report.build_tables([fake_results(tmp_path / "abl")], measure_missing=False)
    for name, df in tables.items():
        console = Console(width=130, record=True)
        console.print(report.to_rich(report.narrow(name, df), name))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= 130
        # every narrow header is printed whole, not folded into pieces
        assert all(w in text for c in report.narrow(name, df).columns for w in c.split())
    t8 = report.narrow("table8", tables["table8"])
    assert MEASURED in t8.columns and "FLOPs B (total)" not in t8.columns


def test_cli_writes_and_refuses_to_overwrite(tmp_path):
    abl = fake_results(tmp_path / "abl")
    out = tmp_path / "reports"
    res = runner.invoke(app, ["report", "--results", str(abl), "--out", str(out), "--no-measure", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["tables"]["table8"][2][MEASURED] == expected_mean_std("b1-deeplab-os32")
    assert (out / "tables.md").is_file() and (out / "report.html").is_file()
    res = runner.invoke(app, ["report", "--results", str(abl), "--out", str(out), "--no-measure"])
    assert res.exit_code == 2 and "--yes" in res.output
    res = runner.invoke(app, ["report", "--results", str(tmp_path / "nope"), "--out", str(out), "--yes"])
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.slow
def test_report_measures_everything_with_no_runs(tmp_path):
    t = report.build_tables()
    assert t["table3"]["FLOPs B (total)"].notna().all() and t["table8"]["FLOPs B (total)"].notna().all()
    t8 = t["table8"]
    rows = [0, 1, 2, 3, 5]  # every row but ResNet-50 w/ atrous is within 5% of the paper
    assert (t8.loc[rows, "Δ FLOPs % (total)"].abs() < 5).all()


def test_engine_run_folder_eval_json_is_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("scale: s\ndataset: cityscapes\nmodel: {}\n")
    (run / "eval.json").write_text(json.dumps({"mIoU": 75.0, "pixAcc": 94.0, "dataset": "cityscapes",
                                               "checkpoint": "run/checkpoints/best.pt"}))
    t4 = report.build_tables([tmp_path], measure_missing=False)["table4"].set_index("Model")
    assert t4.loc["ESeg-S", "mIoU (measured)"] == 75.0 and pd.isna(t4.loc["ESeg-M", "mIoU (measured)"])


def test_level_and_fusion_ablations_get_their_own_tables(tmp_path):
    rows = [{"ablation": "levels", "cell": "p3-p7", "label": "P3-P7", "model": "eseg-s",
             "model_kwargs": {"min_level": 3, "max_level": 7}, "resolution": "1024x2048", "num_classes": 19,
             "params": 6.5e6, "flops": 2.0e10, "flops_conv": 1.9e10, "miou": None, "train": None}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = report.build_tables([tmp_path], measure_missing=False)
    assert "ablate_fusion" not in t
    lv = t["ablate_levels"]
    assert list(lv["Cell"]) == ["P3-P7"] and lv["FLOPs B (total)"][0] == 20.0 and lv["Params M"][0] == 6.5


# ------------------------------------------------------------------ damaged run folders (issue 20)

def run_folder(root, val_rows=(40.0, 42.5)):
    """An engine run folder: config.yaml, val.jsonl, eval.json and its confusion CSV."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("scale: s\ndataset: cityscapes\nmodel: {}\nsteps: 2\n")
    (root / "val.jsonl").write_text("".join(json.dumps({"step": i + 1, "mIoU": m}) + "\n"
                                            for i, m in enumerate(val_rows)))
    (root / "eval.json").write_text(json.dumps({"mIoU": 75.0, "pixAcc": 94.0, "dataset": "cityscapes"}))
    (root / "eval_confusion.csv").write_text(",road,car\nroad,10,2\ncar,1,7\n")
    return root


def test_a_val_log_cut_by_a_crash_keeps_its_whole_rows(tmp_path):
    run = run_folder(tmp_path / "run")
    (run / "eval.json").unlink()
    (run / "val.jsonl").write_text((run / "val.jsonl").read_text() + '{"step": 3, "mI')  # killed mid-write
    t4 = report.build_tables([tmp_path], measure_missing=False)["table4"].set_index("Model")
    assert t4.loc["ESeg-S", "mIoU (measured)"] == 42.5  # the whole rows, not "holds no results"


@pytest.mark.parametrize("damage, needle", [
    (lambda run: (run / "config.yaml").write_text("scale: [s\n"), "config.yaml is damaged"),
    (lambda run: (run / "config.yaml").write_text("- s\n"), "config.yaml is damaged"),
    (lambda run: (run / "val.jsonl").write_text('{"step": 1, "mI\n{"step": 2, "mIoU": 3}\n'), "val.jsonl: line 1"),
    (lambda run: (run / "eval_confusion.csv").write_text(",road,car\nroad,10,lots\ncar,1,7\n"),
     "eval_confusion.csv: cell (road, car) is 'lots'"),
    (lambda run: (run / "eval_confusion.csv").write_text(",road,car\nroad,10,-2\ncar,1,7\n"),
     "eval_confusion.csv: cell (road, car)"),
])
def test_a_damaged_run_is_named_before_anything_is_written(tmp_path, damage, needle):
    run = run_folder(tmp_path / "runs" / "run")
    damage(run)
    out = tmp_path / "reports"
    out.mkdir()
    (out / "tables.md").write_text("the previous report\n")
    res = runner.invoke(app, ["report", "--results", str(tmp_path / "runs"), "--out", str(out), "--no-measure",
                              "--no-figures", "--yes"])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(errors) == 1 and needle in errors[0], res.output
    assert [p.name for p in out.rglob("*")] == ["tables.md"]  # nothing written, the old report unchanged
    assert (out / "tables.md").read_text() == "the previous report\n"


def test_claims_table_pairs_the_seeds_and_gives_verdicts(tmp_path):
    from scipy import stats as sps

    t = report.build_tables([fake_results(tmp_path / "abl")], measure_missing=False)["claims"].set_index("A - B")
    for a, b, verdict in (("b1-bifpn", "b1-deeplab-os16", "holds"),
                          ("b1-deeplab-os16", "b1-deeplab-os32", "inconclusive at this budget"),
                          ("r50-bifpn", "r50-deeplab-os16", "reversed")):
        row = t.loc[f"{a} - {b}"]
        ci = sps.ttest_rel(VALUES[a], VALUES[b]).confidence_interval(0.95)
        assert row["Verdict"] == verdict and row["Seeds"] == 3
        assert row["Δ mIoU (A - B)"] == pytest.approx(np.mean(np.subtract(VALUES[a], VALUES[b])))
        assert row["95% CI"] == f"[{ci.low:+.2f}, {ci.high:+.2f}]"
        assert row["A mIoU"] == expected_mean_std(a)
        assert row["Measured on"] == "synthetic proxy (protocol v1), 3 seeds, 1500 steps"
    assert t.loc["b1-bifpn - b1-deeplab-os16", "Paper"] == "80.1 vs 79.4 (+0.7), Cityscapes val"
    # the power of this budget from the measured std of the differences (0.2 for b1-bifpn - b1-deeplab-os16)
    from eseg_cli.analysis import stats

    row = t.loc["b1-bifpn - b1-deeplab-os16"]
    assert row["Detectable Δ (80% power)"] == pytest.approx(stats.minimum_detectable_difference(0.2, 3))
    assert row["Seeds for Δ paper"] == stats.seeds_needed(0.2, 0.7)
    assert t.loc["p2-p9 - p3-p7", "Verdict"] == "not measured"
    assert t.loc["student - teacher", "Δ paper"] == 1.6
    flops = t.loc["b1-bifpn / b1-deeplab-os16"]  # from the rows' FLOPs, 1e10 and 2e10: exact, no interval
    assert flops["95% CI"] == "ratio 0.50" and flops["Verdict"] == "holds (ratio <= 1/2)" and "(ratio 0.38)" in \
        flops["Paper"]


def test_smoke_runs_are_never_shown_as_measured(tmp_path):
    rows = [{"ablation": "decoder", "cell": c.name, "model": c.model, "model_kwargs": c.kwargs, "seed": 0,
             "resolution": "1024x2048", "num_classes": 19, "params": 1e6, "flops": 1e10, "flops_conv": 1e10,
             "miou": 3.0, "final_miou": 3.0, "train": {"dataset": "synthetic", "steps": 40}, "finished_at": "2026"}
            for c in ablate.cells_for("decoder")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = report.build_tables([tmp_path], measure_missing=False)
    assert not any(c.startswith("mIoU measured") for c in t["table8"].columns)
    claims = t["claims"].set_index("A - B")
    assert claims.loc["b1-bifpn - b1-deeplab-os16", "Verdict"] == "not measured (smoke runs only)"
    assert claims.loc["b1-bifpn - b1-deeplab-os16", "Measured on"] == "only smoke (synthetic, 40 steps, 1 seed): " \
        "not evidence" and pd.isna(claims.loc["b1-bifpn - b1-deeplab-os16", "Δ mIoU (A - B)"])
    assert claims.loc["p2-p9 - p3-p7", "Measured on"] == "not measured"


def test_the_header_says_when_the_ranking_changed_at_the_last_validation(tmp_path):
    rows = ablate.read_results(fake_results(tmp_path / "abl"))
    for r in rows:
        if r.get("cell") == "r50-deeplab-os32" and r.get("final_miou") is not None:
            r["prev_miou"] = 70.0  # ranked first at step 1250, last at the end
    group = report.evidence_group(rows, "decoder")
    assert report.measured_header(group).endswith("ranking differs at step 1250")


def test_self_training_rows_fill_their_claims_beside_the_ablations(tmp_path):
    """Rows as benchmarks/selftrain.py writes them (no model or FLOPs; options describe the data) are read with the
    ablation rows: the extra-data and pretraining claims get their paired difference and verdict."""
    folder = tmp_path / "selftrain"
    folder.mkdir()
    train = {"steps": 1500, "dataset": "synthetic", "recipe": "r.yaml", "protocol": "selftrain v1",
             "protocol_steps": 1500, "overrides": None}
    values = {("selftrain", "teacher"): [40.0, 42.0, 41.0], ("selftrain", "student"): [40.9, 43.0, 42.1],
              ("pretrained", "pretrained"): [50.0, 49.0, 51.0], ("pretrained", "scratch"): [51.0, 50.5, 52.5]}
    with open(folder / "results.jsonl", "w") as f:
        for (ablation, cell), vals in values.items():
            for seed, v in enumerate(vals):
                f.write(json.dumps({"ablation": ablation, "cell": cell, "seed": seed, "final_miou": v,
                                    "options": {"scale": "eseg-lite-s", "labelled": 50}, "train": train,
                                    "finished_at": "2026-12-05T12:00:00Z"}) + "\n")
    t = report.build_tables([fake_results(tmp_path / "abl"), folder], measure_missing=False)["claims"]
    t = t.set_index("A - B")
    st = t.loc["student - teacher"]
    assert st["Verdict"] == "holds" and st["Δ mIoU (A - B)"] == pytest.approx(1.0) and st["Seeds"] == 3
    assert st["Measured on"] == "synthetic proxy (selftrain v1), 3 seeds, 1500 steps, ESeg-Lite-S"
    assert t.loc["pretrained - scratch", "Verdict"] == "reversed"
    assert t.loc["b1-bifpn - b1-deeplab-os16", "Verdict"] == "holds"  # the ablation rows are still read


def test_the_measuring_note_comes_once_and_only_for_what_is_not_cached(monkeypatch):
    calls, notes = [], []
    monkeypatch.setattr(report, "measure", lambda model, kwargs, **kw: calls.append(model) or {"params": 1.0})
    monkeypatch.setattr(report, "cached_measurement", lambda model, kwargs, **kw: None)
    get = report.make_measurer(True, [], lambda: notes.append(len(calls)))
    get("eseg-s", {}, (1024, 2048), 19)
    get("eseg-m", {}, (1024, 2048), 19)
    assert calls == ["eseg-s", "eseg-m"] and notes == [0]  # once, before the first measurement
    monkeypatch.setattr(report, "cached_measurement", lambda model, kwargs, **kw: {"params": 2.0})
    notes.clear()
    report.make_measurer(True, [], lambda: notes.append(1))("eseg-s", {}, (1024, 2048), 19)
    assert notes == []  # everything cached: nothing to announce


def test_a_missing_results_folder_is_refused_before_any_measuring(tmp_path):
    result = runner.invoke(app, ["report", "--results", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
                                 "--yes", "--no-figures", "--no-html"])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "measuring" not in result.output
