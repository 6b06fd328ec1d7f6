"""`eseg plot`: what is plotted equals what the tables hold; labels never overlap."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from test_report import VALUES, fake_results
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


def _marker_points(ax):
    """Every scatter marker of ``ax`` in display coordinates, with its data coordinates."""
    out = []
    for coll in ax.collections:
        for x, y in np.asarray(coll.get_offsets()).tolist():
            out.append(((x, y), ax.transData.transform((x, y))))
    return out


def _assert_labels_nearest_their_points(fig, ax):
    """Each label's anchor (the point of its text box closest to its own point) is nearer its own marker
    than any other marker of the axes."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    markers = _marker_points(ax)
    assert ax.texts
    for t in ax.texts:
        bb = Text.get_window_extent(t, renderer)
        own = ax.transData.transform(t.xy)
        anchor = np.array(plot.label_anchor((bb.x0, bb.y0, bb.x1, bb.y1), own))
        nearest = min(markers, key=lambda m: float(((m[1] - anchor) ** 2).sum()))
        assert np.allclose(nearest[0], t.xy), (t.get_text(), t.xy, nearest[0])


def _bar_widths(ax, gid):
    return [p.get_width() for p in ax.patches if p.get_gid() == gid]


def test_figure1_plots_table4(tmp_path):
    t4 = report.build_tables([fake_results(tmp_path / "abl")], measure_missing=False)["table4"]
    fig, pts, paths = plot.plot_figure1(t4, tmp_path / "fig")
    ax, bx = fig.axes
    with_flops = t4[t4["FLOPs B (paper)"].notna() & (t4["mIoU note"] == "")]
    peers = with_flops[~with_flops.Model.str.startswith("ESeg")]
    eseg = with_flops[with_flops.Model.str.startswith("ESeg")]
    assert _offsets(ax, "peer") == sorted(zip(peers["FLOPs B (paper)"], peers["mIoU (paper)"]))
    assert _offsets(ax, "eseg") == sorted(zip(eseg["FLOPs B (paper)"], eseg["mIoU (paper)"]))
    extra = with_flops[with_flops["mIoU w/ extra (paper)"].notna()]
    assert len(_offsets(ax, "eseg+data")) + len(_offsets(ax, "peer+data")) == len(extra)
    assert not [c for c in ax.collections if c.get_gid() == "eseg measured"]  # no Cityscapes mIoU measured here
    # panel (b): the measured FLOPs are bars of their own, never hidden under the paper's markers
    assert _bar_widths(bx, "flops paper") == list(eseg["FLOPs B (paper)"])
    assert _bar_widths(bx, "flops total") == list(eseg["FLOPs B (total)"])
    assert _bar_widths(bx, "flops conv") == list(eseg["FLOPs B (conv)"])
    assert ax.get_xscale() == "log"
    boxes = _no_overlap(fig)
    assert len([t for t in ax.texts]) == len(pts)  # every point of panel (a) is labelled
    assert len(boxes) >= len(pts)
    _assert_labels_nearest_their_points(fig, ax)
    assert {p.suffix for p in paths} == {".png", ".svg"} and all(p.stat().st_size > 1000 for p in paths)


def test_figure1_shows_a_measured_cityscapes_miou(tmp_path):
    (tmp_path / "ev.json").write_text(json.dumps({"model": "eseg-s", "dataset": "cityscapes", "mIoU": 77.5}))
    t4 = report.build_tables([fake_results(tmp_path / "abl"), tmp_path / "ev.json"], measure_missing=False)["table4"]
    fig, pts, _ = plot.plot_figure1(t4)
    assert _offsets(fig.axes[0], "eseg measured") == [(10.0, 77.5)]  # fvcore FLOPs of the fake ablation
    _assert_labels_nearest_their_points(fig, fig.axes[0])


def test_figure4_paper_panel_and_measured_panel(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps([{"model": "eseg-lite-s", "fps": 3.5, "device": "cpu (x86_64, 2 threads)",
                                 "latency_resolution": "1024x2048"},
                                {"model": "eseg-lite-m", "fps": 2.0, "device": "cpu (x86_64, 2 threads)"},
                                {"model": "eseg-lite-l", "fps": 1.25, "device": "cpu (x86_64, 2 threads)"}]))
    pts = plot.figure4_points(paper.load("figure4"), plot.read_profiles([prof]))
    fig, pts, paths = plot.plot_figure4(pts, tmp_path)
    ax, bx = fig.axes
    f4 = paper.load("figure4")
    ref = f4[f4.model.str.startswith("ESeg")]
    assert _offsets(ax, "eseg") == sorted(zip(ref.fps.astype(float), ref.miou.astype(float)))
    assert not [c for c in ax.collections if c.get_gid() == "measured"]  # never on the paper's axis
    assert sorted(_bar_widths(bx, "measured")) == [1.25, 2.0, 3.5]  # Lite-M included
    assert [t.get_text() for t in bx.get_yticklabels()] == ["ESeg-Lite-L", "ESeg-Lite-M", "ESeg-Lite-S"]
    assert "cpu (x86_64, 2 threads)" in bx.get_title() and "1024x2048" in bx.get_title()
    _no_overlap(fig)
    _assert_labels_nearest_their_points(fig, ax)


def test_benchmark_json_rows_are_read(tmp_path):
    (tmp_path / "peers.json").write_text(json.dumps({"rows": [{"model": "x", "fps": 1.0}], "fps_best_e2e": [
        {"model": "ESeg-Lite-S", "fps": 20.0, "device": "cpu", "resolution": "512x1024", "mode": "compiled"},
        {"model": "ESeg-Lite-S", "fps": 5.0, "device": "cpu", "resolution": "1024x2048", "mode": "compiled"}]}))
    (tmp_path / "other.json").write_text(json.dumps({"results": [{"model": "fasterseg", "fps": 9.0, "device": "d"}]}))
    (tmp_path / "lite.json").write_text(json.dumps([{"model": "eseg-lite-s", "fps": 4.0, "device": "d"}]))
    rows = plot.read_profiles([tmp_path])  # a folder: every JSON in it; fps_best_e2e wins over the raw rows
    assert sorted((r["model"], r["fps"]) for r in rows) == [("ESeg-Lite-S", 5.0), ("ESeg-Lite-S", 20.0),
                                                             ("eseg-lite-s", 4.0), ("fasterseg", 9.0)]
    with pytest.raises(plot.EsegError, match="absent.json"):
        plot.read_profiles([tmp_path / "absent.json"])
    pts = plot.figure4_points(paper.load("figure4"), rows)
    fig, _, _ = plot.plot_figure4(pts)
    bx = fig.axes[1]
    labels = [t.get_text() for t in bx.get_yticklabels()]
    assert "ESeg-Lite-S, cpu, 1024x2048, compiled" in labels and "ESeg-Lite-S, cpu, 512x1024, compiled" in labels
    assert sorted(_bar_widths(bx, "measured")) == [4.0, 5.0, 9.0, 20.0]


def test_training_curves_plot_the_run_logs(tmp_path):
    run = tmp_path / "runs" / "a-0123456789ab"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("scale: lite-s\ndataset: synthetic\nsteps: 3\n")
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s, "lr": 0.1 * s}) + "\n"
                                           for s in (1, 2, 3)))
    (run / "val.jsonl").write_text(json.dumps({"step": 3, "mIoU": 12.5}) + "\n")
    fig, data, paths = plot.plot_training_curves(plot.find_runs([tmp_path]), tmp_path)
    loss_ax, lr_ax, miou_ax = fig.axes
    assert list(loss_ax.lines[0].get_ydata()) == [3.0, 1.5, 1.0]
    assert list(lr_ax.lines[0].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])
    assert list(miou_ax.lines[0].get_xdata()) == [3] and list(miou_ax.lines[0].get_ydata()) == [12.5]
    assert list(data) == ["a"]  # the ablation's hash suffix is not part of the legend
    for ax in fig.axes:
        assert "lite-s, on synthetic, 3 steps" in ax.get_title()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert len(paths) == 2


def test_confusion_heatmap_is_row_normalised(tmp_path):
    csv = tmp_path / "eval_confusion.csv"
    csv.write_text("true\\pred,road,sky,car\nroad,8,2,0\nsky,1,3,0\ncar,0,0,0\n")
    cm = plot.read_confusion(csv)
    fig, norm, paths = plot.plot_confusion(cm, tmp_path, title="t")
    img = fig.axes[0].images[0].get_array()
    assert np.allclose(img[0], [0.8, 0.2, 0.0]) and np.allclose(img[1], [0.25, 0.75, 0.0])
    assert np.isnan(np.asarray(img.filled(np.nan) if hasattr(img, "filled") else img)[2]).all()  # never seen
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["road", "sky", "car"]
    assert {p.suffix for p in paths} == {".png", ".svg"}
    csv.write_text("t,a,b\nx,1,2\n")
    with pytest.raises(plot.EsegError, match="square"):
        plot.read_confusion(csv)


def test_per_class_iou_bars():
    per_class = {"road": {"IoU": 90.0}, "sky": {"IoU": 45.5}, "train": {"IoU": None}}
    fig, iou, _ = plot.plot_per_class_iou(per_class, miou=67.75)
    ax = fig.axes[0]
    assert _bar_widths(ax, "iou") == [90.0, 45.5, 0.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["road", "sky", "train"]
    assert "n/a" in [t.get_text() for t in ax.texts]


def test_prediction_grid_marks_errors():
    img = np.full((4, 6, 3), 200, np.uint8)
    gt = np.zeros((4, 6), np.uint8)
    gt[0, 0] = 255
    pred = gt.copy()
    pred[3, 5] = 1
    emap = plot.error_map(img, gt, pred)
    assert tuple(emap[3, 5]) == (230, 30, 30) and tuple(emap[0, 0]) == (0, 0, 0) and emap[1, 1].max() < 100
    fig, accs, _ = plot.plot_predictions([{"name": "x", "image": img, "gt": gt, "pred": pred}],
                                         [(128, 64, 128), (70, 70, 70)])
    assert len(fig.axes) == 4 and accs == [pytest.approx(100 * 22 / 23)]


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
    assert sorted(p.split("/")[-1] for p in data["files"]) == ["ablation_seeds.png", "ablation_seeds.svg",
                                                                "figure1.png", "figure1.svg", "figure4.png",
                                                                "figure4.svg"]
    assert "curves" in data["skipped"]
    res = runner.invoke(app, ["plot", "--out", str(out), "--no-measure", "--only", "figure4"])
    assert res.exit_code == 2 and "--yes" in res.output
    res = runner.invoke(app, ["plot", "--out", str(out), "--only", "figure9", "--yes"])
    assert res.exit_code == 2 and "figure9" in res.output


def test_ablation_seeds_figure_shows_every_seed_and_the_mean(tmp_path):
    from eseg_cli.analysis.ablate import read_results

    fig, data, paths = plot.plot_ablation_seeds(read_results(fake_results(tmp_path / "abl")), tmp_path)
    (ax,) = fig.axes
    assert "synthetic proxy (protocol v1), 3 seeds, 1500 steps" in ax.get_title() and len(paths) == 2
    dots = [c for c in ax.collections if c.get_gid() == "seed"]
    assert sorted(y for c in dots for _, y in c.get_offsets()) == sorted(v for vs in VALUES.values() for v in vs)
    bars = [ln for ln in ax.lines if ln.get_gid() == "mean" and ln.get_marker() == "o"]  # not the caps
    assert [ln.get_ydata()[0] for ln in bars] == pytest.approx([np.mean(v) for v in VALUES.values()])
    assert data["decoder"]["b1-bifpn"]["std"] == pytest.approx(np.std(VALUES["b1-bifpn"], ddof=1))
    with pytest.raises(plot.EsegError, match="smoke"):
        plot.plot_ablation_seeds([])


def test_training_curves_of_seeds_are_a_mean_with_a_band(tmp_path):
    for seed, miou in ((0, [10.0, 20.0]), (1, [14.0, 30.0])):
        run = tmp_path / "runs" / f"p2-p9-s{seed}-0123456789ab"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"scale: lite-s\ndataset: synthetic\nsteps: 4\nseed: {seed}\n")
        (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": (seed + 1.0) / s, "lr": 0.1})
                                               + "\n" for s in (1, 2, 3, 4)))
        (run / "val.jsonl").write_text("".join(json.dumps({"step": s, "mIoU": m}) + "\n"
                                               for s, m in zip((2, 4), miou, strict=True)))
    fig, data, _ = plot.plot_training_curves(plot.find_runs([tmp_path]))
    assert list(data) == ["p2-p9"] and data["p2-p9"]["seeds"] == [0, 1]
    loss_ax, _, miou_ax = fig.axes
    assert list(miou_ax.lines[0].get_ydata()) == [12.0, 25.0]  # the mean over the two seeds
    assert list(data["p2-p9"]["val"]["mIoU_std"]) == pytest.approx([np.std([10, 14], ddof=1), np.std([20, 30],
                                                                                                       ddof=1)])
    assert len(miou_ax.collections) == 1 and len(loss_ax.collections) == 1  # the bands
    assert "lite-s, on synthetic, 4 steps, 2 seeds" in miou_ax.get_title()


def test_training_curves_are_drawn_per_ablation(tmp_path):
    for kind, cell in (("decoder", "b1-bifpn"), ("levels", "p2-p9"), ("levels", "p3-p7"), ("selftrain", "teacher")):
        run = tmp_path / "abl" / kind / "logs" / f"{cell}-s0-0123456789ab"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("scale: lite-s\ndataset: synthetic\nsteps: 2\nseed: 0\n")
        (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 0.1}) + "\n"
                                               for s in (1, 2)))
    out = plot.generate_figures([tmp_path / "abl"], tmp_path / "figs", which=("curves",))
    assert sorted(p.split("/")[-1] for p in out["files"]) == [
        "training_curves_decoder.png", "training_curves_decoder.svg", "training_curves_levels.png",
        "training_curves_levels.svg", "training_curves_selftrain.png", "training_curves_selftrain.svg"]
    (_, (fig, data, _)), = [c for c in plot.curve_figures(plot.find_runs([tmp_path / "abl"])) if c[0] == "levels"]
    assert sorted(data) == ["p2-p9", "p3-p7"]
