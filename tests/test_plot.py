"""`eseg plot`: what is plotted equals what the tables hold; labels never overlap."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from test_report import fake_results
from typer.testing import CliRunner

from eseg_cli.analysis import paper, plot, report
from eseg_cli.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ESEG_CACHE_DIR", str(tmp_path / "cache"))


def _offsets(ax, gid):
    [coll] = [c for c in ax.collections if c.get_gid() == gid]
    return sorted(map(tuple, np.asarray(coll.get_offsets()).tolist()))


def _label_boxes(fig) -> list:
    """Window extents of every text label in the figure's axes (the text alone: an annotation's own extent
    includes its arrow)."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for ax in fig.axes for t in ax.texts if t.get_text()]


def _no_overlap(fig):
    boxes = _label_boxes(fig)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    return boxes


def test_figure1_plots_table4(tmp_path):
    t4 = report.build_tables([fake_results(tmp_path / "abl")], measure_missing=False)["table4"]
    fig, pts, paths = plot.plot_figure1(t4, tmp_path / "fig")
    ax = fig.axes[0]
    with_flops = t4[t4["FLOPs B (paper)"].notna() & (t4["mIoU note"] == "")]
    peers = with_flops[~with_flops.Model.str.startswith("ESeg")]
    eseg = with_flops[with_flops.Model.str.startswith("ESeg")]
    assert _offsets(ax, "peer") == sorted(zip(peers["FLOPs B (paper)"], peers["mIoU (paper)"]))
    assert _offsets(ax, "eseg") == sorted(zip(eseg["FLOPs B (paper)"], eseg["mIoU (paper)"]))
    extra = with_flops[with_flops["mIoU w/ extra (paper)"].notna()]
    assert len(_offsets(ax, "eseg+data")) + len(_offsets(ax, "peer+data")) == len(extra)
    # the measured ESeg FLOPs are the table's measured column (here the fake ablation's)
    assert _offsets(ax, "eseg measured") == sorted(zip(eseg["FLOPs B (total)"], eseg["mIoU (paper)"]))
    assert ax.get_xscale() == "log"
    boxes = _no_overlap(fig)
    assert len(boxes) == len(pts[pts.kind != "eseg measured"])  # every paper point is labelled
    assert {p.suffix for p in paths} == {".png", ".svg"} and all(p.stat().st_size > 1000 for p in paths)


def test_figure4_paper_points_and_measured_fps(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps([{"model": "eseg-lite-s", "fps": 3.5, "device": "cpu (x86_64, 2 threads)",
                                 "latency_resolution": "1024x2048"},
                                {"model": "eseg-lite-m", "fps": 2.0, "device": "cpu (x86_64, 2 threads)"}]))
    pts = plot.figure4_points(paper.load("figure4"), plot.read_profiles([prof]))
    fig, pts, paths = plot.plot_figure4(pts, tmp_path, resolution="1024x2048")
    ax = fig.axes[0]
    f4 = paper.load("figure4")
    ref = f4[f4.model.str.startswith("ESeg")]
    assert _offsets(ax, "eseg") == sorted(zip(ref.fps.astype(float), ref.miou.astype(float)))
    assert _offsets(ax, "measured") == [(3.5, 76.0)]  # at ESeg-Lite-S's paper mIoU; Lite-M has none
    assert "cpu (x86_64, 2 threads)" in ax.get_title()
    _no_overlap(fig)


def test_training_curves_plot_the_run_logs(tmp_path):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in (1, 2, 3)))
    (run / "val.jsonl").write_text(json.dumps({"step": 3, "mIoU": 12.5}) + "\n")
    fig, data, paths = plot.plot_training_curves(plot.find_runs([tmp_path]), tmp_path)
    loss_ax, miou_ax = fig.axes
    assert list(loss_ax.lines[0].get_ydata()) == [3.0, 1.5, 1.0]
    assert list(miou_ax.lines[0].get_xdata()) == [3] and list(miou_ax.lines[0].get_ydata()) == [12.5]
    assert len(paths) == 2


def test_place_labels_never_overlaps_crowded_points():
    plt = plot._mpl()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=plot.DPI)
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(0, 10, 25), rng.uniform(0, 10, 25)
    ax.scatter(xs, ys)
    ax.set_xlim(-1, 11), ax.set_ylim(-1, 11)
    plot.place_labels(ax, xs, ys, [f"model number {i}" for i in range(25)])
    _no_overlap(fig)
    plt.close(fig)


def test_cli_plot(tmp_path):
    abl = fake_results(tmp_path / "abl")
    out = tmp_path / "figs"
    res = runner.invoke(app, ["plot", "--results", str(abl), "--out", str(out), "--no-measure", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert sorted(p.split("/")[-1] for p in data["files"]) == ["figure1.png", "figure1.svg", "figure4.png",
                                                                "figure4.svg"]
    assert "curves" in data["skipped"]
    res = runner.invoke(app, ["plot", "--out", str(out), "--no-measure", "--only", "figure4"])
    assert res.exit_code == 2 and "--yes" in res.output
    res = runner.invoke(app, ["plot", "--out", str(out), "--only", "figure9", "--yes"])
    assert res.exit_code == 2 and "figure9" in res.output
