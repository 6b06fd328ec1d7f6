"""Figures: Figure 1 (FLOPs vs Cityscapes mIoU), Figure 4 (FPS vs mIoU, real-time family) and
training curves, as PNG and SVG.

Every figure is drawn from the same DataFrames that :mod:`eseg_cli.analysis.report` writes as tables
(``figure1_points(table4)`` ...), so what is plotted is what the tables hold. Labels are placed by a
small greedy placer that tries positions around each point and keeps the first one that overlaps no
other label, no marker and stays inside the axes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from eseg_cli.engine.run import Run
from eseg_cli.errors import EsegError

FORMATS = ("png", "svg")
DPI = 150  # the figure is laid out at the dpi it is saved at, so label placement holds in the file


def _mpl():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- label placement

_DIRECTIONS = [(1, 0.35), (1, -0.6), (-1, 0.35), (-1, -0.6), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]


def place_labels(ax, xs, ys, labels, *, fontsize: float = 8, color="0.15", avoid=(), avoid_artists=()) -> list:
    """Annotate points so that no two labels overlap, no label covers a marker of ``xs, ys`` (or of
    the extra ``avoid`` points, or ``avoid_artists`` such as a legend) and every label stays inside
    the axes. Returns the annotation artists.

    Positions are tried at growing distances in ten directions around the point, then anywhere on a
    grid over the axes, nearest first; a thin leader line joins a label placed away from its point.
    Only if the axes have no free room at all does a label overlap (beside its point).
    """
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ab = ax.get_window_extent(renderer)
    px = fig.dpi / 72.0  # pixels per point
    pts = ax.transData.transform(list(zip(xs, ys, strict=True))) if len(xs) else []
    extra = ax.transData.transform(list(avoid)) if len(avoid) else []
    r, pad = 4.5 * px, 1.5 * px  # marker half-size, gap kept around every box
    taken = [(x - r, y - r, x + r, y + r) for x, y in [*pts, *extra]]
    for a in avoid_artists:
        bb = a.get_window_extent(renderer)
        taken.append((bb.x0, bb.y0, bb.x1, bb.y1))

    def free(b):
        if b[0] < ab.x0 + pad or b[2] > ab.x1 - pad or b[1] < ab.y0 + pad or b[3] > ab.y1 - pad:
            return False
        return not any(b[0] < o[2] + pad and o[0] < b[2] + pad and b[1] < o[3] + pad and o[1] < b[3] + pad
                       for o in taken)

    def box(ax_, ay, w, h, ha, va):
        x0 = ax_ if ha == "left" else ax_ - w if ha == "right" else ax_ - w / 2
        y0 = ay if va == "bottom" else ay - h if va == "top" else ay - h / 2
        return (x0, y0, x0 + w, y0 + h)

    artists = []
    for (x, y), (px_x, px_y), label in zip(zip(xs, ys, strict=True), pts, labels, strict=True):
        probe = ax.annotate(label, (x, y), fontsize=fontsize)
        probe.update_positions(renderer)
        bb = Text.get_window_extent(probe, renderer)
        w, h = bb.width, bb.height
        probe.remove()
        candidates = []
        for dist in (7, 12, 20, 30, 42, 56, 72, 90):
            for dx, dy in _DIRECTIONS:
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0.5 else "top" if dy < -0.5 else "center"
                candidates.append((dx * dist, dy * dist, ha, va))
        step = 8  # points
        grid = [(gx, gy) for gx in range(-int(ab.width / px), int(ab.width / px) + 1, step)
                for gy in range(-int(ab.height / px), int(ab.height / px) + 1, step)]
        candidates += [(gx, gy, "center", "center") for gx, gy in sorted(grid, key=lambda g: g[0] ** 2 + g[1] ** 2)]
        chosen = None
        for ox, oy, ha, va in candidates:
            b = box(px_x + ox * px, px_y + oy * px, w, h, ha, va)
            if free(b):
                chosen = (ox, oy, ha, va, b)
                break
        if chosen is None:  # no room anywhere: keep the label beside its point rather than drop it
            chosen = (7, 0, "left", "center", box(px_x + 7 * px, px_y, w, h, "left", "center"))
        ox, oy, ha, va, b = chosen
        far = (ox * ox + oy * oy) ** 0.5 > 12
        t = ax.annotate(label, (x, y), xytext=(ox, oy), textcoords="offset points", ha=ha, va=va,
                        fontsize=fontsize, color=color, zorder=5,
                        arrowprops=dict(arrowstyle="-", lw=0.5, color="0.55", shrinkA=0, shrinkB=3) if far else None)
        taken.append(b)
        artists.append(t)
    return artists


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    import io

    import matplotlib

    from eseg_cli.utils import atomic_write_bytes

    paths = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        # no date and fixed ids in SVGs: regenerating unchanged figures leaves the files unchanged
        meta = {"Date": None} if fmt == "svg" else {}
        with matplotlib.rc_context({"svg.hashsalt": "eseg"}):
            fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", metadata=meta)
        paths.append(atomic_write_bytes(out_dir / f"{stem}.{fmt}", buf.getvalue()))
    return paths


# ----------------------------------------------------------------------------- Figure 1

def figure1_points(table4: pd.DataFrame) -> pd.DataFrame:
    """The points of Figure 1 from Table 4's DataFrame (as built by ``report.table4``).

    Kinds: ``eseg`` (paper FLOPs, paper mIoU), ``eseg+data`` and ``peer+data`` (extra data),
    ``peer``, and ``eseg measured`` (this build's fvcore FLOPs, at the measured mIoU where there is
    one, else the paper's). Rows without FLOPs in the paper cannot be placed and are left out.
    """
    rows = []
    for r in table4.to_dict("records"):
        name, fl, miou = r["Model"], r["FLOPs B (paper)"], r["mIoU (paper)"]
        if fl is None or (isinstance(fl, float) and math.isnan(fl)):
            continue
        is_eseg = name.startswith("ESeg")
        if r["mIoU note"]:  # multi-scale numbers are not comparable on this plot
            continue
        rows.append({"label": name, "flops_b": float(fl), "miou": float(miou), "kind": "eseg" if is_eseg else "peer"})
        extra = r["mIoU w/ extra (paper)"]
        if extra is not None and not (isinstance(extra, float) and math.isnan(extra)):
            rows.append({"label": f"{name} +data", "flops_b": float(fl), "miou": float(extra),
                         "kind": "eseg+data" if is_eseg else "peer+data"})
        meas = r.get("FLOPs B (total)")
        if is_eseg and meas is not None and not (isinstance(meas, float) and math.isnan(meas)):
            m_miou = r.get("mIoU (measured)")
            has_m = m_miou is not None and not (isinstance(m_miou, float) and math.isnan(m_miou))
            rows.append({"label": f"{name} (this build)", "flops_b": float(meas),
                         "miou": float(m_miou) if has_m else float(miou), "kind": "eseg measured"})
    return pd.DataFrame(rows, columns=["label", "flops_b", "miou", "kind"])


_STYLE = {
    "eseg": dict(marker="o", s=46, color="tab:red", label="ESeg (paper)", zorder=4),
    "eseg+data": dict(marker="*", s=90, color="tab:red", label="ESeg +extra data (paper)", zorder=4),
    "eseg measured": dict(marker="o", s=46, facecolors="none", edgecolors="tab:red", linewidths=1.2,
                          label="ESeg, FLOPs measured here (fvcore total)", zorder=4),
    "peer": dict(marker="s", s=30, color="tab:blue", label="others (paper, Table 4)", zorder=3),
    "peer+data": dict(marker="*", s=70, color="tab:blue", label="others +extra data (paper)", zorder=3),
}


def plot_figure1(table4: pd.DataFrame, out_dir: str | Path | None = None):
    """Figure 1: FLOPs (log x, billions at 1024x2048) vs Cityscapes val mIoU. Returns ``(fig, points,
    paths)``; ``paths`` is empty when ``out_dir`` is None."""
    plt = _mpl()
    pts = figure1_points(table4)
    if pts.empty:
        raise EsegError("Table 4 has no rows with FLOPs to plot; check eseg_cli/resources/paper/table4.csv")
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=DPI)
    for kind, style in _STYLE.items():
        sub = pts[pts.kind == kind]
        if len(sub):
            ax.scatter(sub.flops_b, sub.miou, gid=kind, **style)
    es = pts[pts.kind == "eseg"].sort_values("flops_b")
    ax.plot(es.flops_b, es.miou, color="tab:red", lw=1.2, zorder=2)
    ed = pts[pts.kind == "eseg+data"].sort_values("flops_b")
    ax.plot(ed.flops_b, ed.miou, color="tab:red", lw=1, ls="--", zorder=2)
    for m in pts[pts.kind == "eseg measured"].itertuples():  # tie each measured point to its paper point
        src = es[es.label == m.label.removesuffix(" (this build)")]
        if len(src):
            ax.plot([src.flops_b.iloc[0], m.flops_b], [src.miou.iloc[0], m.miou], color="tab:red", lw=0.6,
                    ls=":", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs (billions of multiply-adds at 1024x2048, log scale)")
    ax.set_ylabel("Cityscapes val mIoU (%)")
    ax.set_title("Figure 1: FLOPs vs accuracy on Cityscapes (paper values; hollow = this build's FLOPs)")
    ax.grid(True, which="both", alpha=0.25)
    lo, hi = pts.flops_b.min(), pts.flops_b.max()
    ax.set_xlim(lo / 1.8, hi * 2.2)
    ax.set_ylim(pts.miou.min() - 1.0, pts.miou.max() + 0.8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    lab = pts[pts.kind != "eseg measured"]
    meas = pts[pts.kind == "eseg measured"]
    place_labels(ax, list(lab.flops_b), list(lab.miou), list(lab.label), avoid=list(zip(meas.flops_b, meas.miou)))
    paths = _save(fig, Path(out_dir), "figure1") if out_dir is not None else []
    return fig, pts, paths


# ----------------------------------------------------------------------------- Figure 4

def read_profiles(paths) -> list[dict]:
    """Rows of ``eseg profile --json`` outputs (an object or a list of objects per file) that hold FPS."""
    rows = []
    for p in paths:
        p = Path(p)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EsegError(f"--profile {p} is not a readable `eseg profile --json` output: {e}") from None
        for r in data if isinstance(data, list) else [data]:
            if isinstance(r, dict) and r.get("fps") and r.get("model"):
                rows.append(r)
    return rows


def figure4_points(paper_points: pd.DataFrame, measured: list[dict], measured_miou: dict[str, float] | None = None
                   ) -> pd.DataFrame:
    """Figure 4's points: the paper's (``figure4.csv``) and this device's measured FPS.

    A measured model is placed at its measured mIoU (``measured_miou[key]``) when given, else at the
    paper's mIoU for it; models with neither are left out (they have no y value).
    """
    rows = [{"label": r["model"], "key": r["key"], "fps": float(r["fps"]), "miou": float(r["miou"]),
             "kind": "eseg" if r["model"].startswith("ESeg") else "peer", "device": "paper"}
            for r in paper_points.to_dict("records")]
    paper_miou = {r["key"]: float(r["miou"]) for r in paper_points.to_dict("records") if r["key"]}
    for m in measured:
        key = m["model"]
        miou = (measured_miou or {}).get(key, paper_miou.get(key))
        if miou is None:
            continue
        from eseg_cli.models import SCALES

        name = SCALES[key].display_name if key in SCALES else key
        rows.append({"label": f"{name} ({m.get('device', 'this device')})", "key": key, "fps": float(m["fps"]),
                     "miou": float(miou), "kind": "measured", "device": m.get("device", "")})
    return pd.DataFrame(rows, columns=["label", "key", "fps", "miou", "kind", "device"])


def plot_figure4(points: pd.DataFrame, out_dir: str | Path | None = None, *, resolution: str | None = None):
    """Figure 4: FPS (log x) vs Cityscapes mIoU for the real-time family. Returns ``(fig, points, paths)``."""
    plt = _mpl()
    if points.empty:
        raise EsegError("no Figure 4 points to plot; check eseg_cli/resources/paper/figure4.csv")
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=DPI)
    styles = {"eseg": dict(marker="o", s=50, color="tab:red", label="ESeg-Lite (paper)"),
              "peer": dict(marker="s", s=36, color="tab:blue", label="real-time peers (paper)"),
              "measured": dict(marker="D", s=40, facecolors="none", edgecolors="tab:green", linewidths=1.3,
                               label="measured here (paper mIoU)")}
    for kind, st in styles.items():
        sub = points[points.kind == kind]
        if len(sub):
            ax.scatter(sub.fps, sub.miou, gid=kind, zorder=4, **st)
    devices = sorted({d for d in points[points.kind == "measured"].device if d})
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(int(v))[0] in "25" else ""))
    ax.set_xlabel("inference speed (frames per second, log scale)")
    ax.set_ylabel("Cityscapes val mIoU (%)")
    title = "Figure 4: speed vs accuracy, real-time family"
    if devices:
        title += f"\nmeasured on {', '.join(devices)}" + (f" at {resolution}" if resolution else "")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.set_xlim(points.fps.min() / 2.5, points.fps.max() * 3)
    ax.set_ylim(points.miou.min() - 1.5, points.miou.max() + 1.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    place_labels(ax, list(points.fps), list(points.miou), [_short(r) for r in points.to_dict("records")])
    paths = _save(fig, Path(out_dir), "figure4") if out_dir is not None else []
    return fig, points, paths


def _short(r: dict) -> str:
    return r["label"].split(" (")[0] + (" (here)" if r["kind"] == "measured" else "") + f" {r['fps']:.3g} FPS"


# ----------------------------------------------------------------------------- training curves

def find_runs(paths) -> list[Path]:
    """Run folders (holding the engine's ``log.jsonl`` or ``val.jsonl``) in or under ``paths``."""
    return [r.path for r in Run.find(paths)]


def read_run(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """A run's training log (step, loss, lr ...) and validations (step, mIoU, pixAcc ...).

    A step logged twice (a run resumed by an older version) keeps its later row.
    """
    run = Run(run_dir)
    out = {}
    for name, rows in (("log", run.read_log()), ("val", run.read_val())):
        df = pd.DataFrame(rows)
        if not df.empty and "step" in df:
            df = df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)
        out[name] = df
    return out


def _run_label(run_dir: Path, runs: list[Path]) -> str:
    names = [r.name for r in runs]
    return run_dir.name if names.count(run_dir.name) == 1 else f"{run_dir.parent.name}/{run_dir.name}"


def plot_training_curves(run_dirs: list[Path], out_dir: str | Path | None = None):
    """Loss and validation mIoU vs step for every run (one line per run). Returns ``(fig, data, paths)``
    where ``data`` maps each run label to ``{"log": df, "val": df}``."""
    plt = _mpl()
    if not run_dirs:
        raise EsegError("no training runs found (folders with log.jsonl); pass --results RUN_DIR or a folder of runs")
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=DPI)
    data = {}
    for run in run_dirs:
        label = _run_label(run, run_dirs)
        d = read_run(run)
        data[label] = d
        if not d["log"].empty and "loss" in d["log"]:
            ax_l.plot(d["log"].step, d["log"].loss, label=label, lw=1.3)
        if not d["val"].empty and "mIoU" in d["val"]:
            ax_m.plot(d["val"].step, d["val"].mIoU, marker="o", ms=3.5, label=label, lw=1.3)
    ax_l.set(xlabel="step", ylabel="training loss (mean over the log interval)", title="Training loss")
    ax_m.set(xlabel="step", ylabel="validation mIoU (%)", title="Validation mIoU")
    for ax in (ax_l, ax_m):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    paths = _save(fig, Path(out_dir), "training_curves") if out_dir is not None else []
    return fig, data, paths


# ----------------------------------------------------------------------------- all figures

def measure_fps(models: list[str], *, resolution: tuple[int, int] = (1024, 2048), device: str = "auto",
                runs: int = 5, warmup: int = 2, **kw) -> list[dict]:
    """FPS of registered models on this device, as ``eseg profile`` measures it (no FLOPs)."""
    from eseg_cli.analysis.profiler import profile_model

    return [profile_model(m, resolution=resolution, flops=False, latency=True, device=device, runs=runs,
                          warmup=warmup, **kw) for m in models]


REALTIME = ("eseg-lite-s", "eseg-lite-m", "eseg-lite-l")


def generate_figures(results=(), out_dir: str | Path = "reports/figures", *, profiles=(), measure_fps_now: bool = False,
                     fps_resolution: tuple[int, int] = (1024, 2048), device: str = "auto", runs: int = 5,
                     measure_missing: bool = True, which=("figure1", "figure4", "curves")) -> dict:
    """Draw the requested figures into ``out_dir`` from the same tables ``eseg report`` writes.

    Figure 4's measured points come from ``profiles`` (``eseg profile --json`` files) and, with
    ``measure_fps_now``, from timing the ESeg-Lite models here (saved as ``fps_measured.json``).
    Training curves need run folders in ``results``; without any, that figure is skipped (reported
    under ``skipped``).
    """
    from eseg_cli.analysis import paper
    from eseg_cli.analysis.report import build_tables

    out_dir = Path(out_dir)
    summary: dict = {"files": [], "skipped": {}, "points": {}}
    plt = _mpl()
    if "figure1" in which:
        tables = build_tables(results, measure_missing=measure_missing)
        fig, pts, paths = plot_figure1(tables["table4"], out_dir)
        plt.close(fig)
        summary["files"] += [str(p) for p in paths]
        summary["points"]["figure1"] = json.loads(pts.to_json(orient="records"))
    if "figure4" in which:
        measured = read_profiles(profiles)
        if measure_fps_now:
            now = measure_fps(list(REALTIME), resolution=fps_resolution, device=device, runs=runs)
            from eseg_cli.utils import atomic_write_json

            # kept beside the figure so later runs can reuse it: --profile <out>/fps_measured.json
            summary["files"].append(str(atomic_write_json(out_dir / "fps_measured.json", now)))
            measured += now
        res_txt = {r.get("latency_resolution") for r in measured if r.get("latency_resolution")}
        fig, pts, paths = plot_figure4(figure4_points(paper.load("figure4"), measured), out_dir,
                                       resolution=", ".join(sorted(res_txt)) or None)
        plt.close(fig)
        summary["files"] += [str(p) for p in paths]
        summary["points"]["figure4"] = json.loads(pts.to_json(orient="records"))
        without = sorted({m["model"] for m in measured} - set(pts.key))
        if without:
            summary["skipped"]["figure4"] = f"no mIoU (paper or measured) to place: {', '.join(without)}"
    if "curves" in which:
        runs_found = find_runs(results)
        if runs_found:
            fig, _, paths = plot_training_curves(runs_found, out_dir)
            plt.close(fig)
            summary["files"] += [str(p) for p in paths]
            summary["points"]["curves"] = [str(r) for r in runs_found]
        else:
            summary["skipped"]["curves"] = "no run folders (with log.jsonl) under --results"
    return summary
