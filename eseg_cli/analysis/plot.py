"""Figures: Figure 1 (FLOPs vs Cityscapes mIoU), Figure 4 (FPS vs mIoU, real-time family), training curves (the
seeds of a cell as a mean with a band) and each ablation cell's final mIoU per seed, as PNG and SVG.

Every figure is drawn from the same DataFrames that :mod:`eseg_cli.analysis.report` writes as tables
(``figure1_points(table4)`` ...), so what is plotted is what the tables hold. Labels are placed by a
small greedy placer that tries positions around each point and keeps the first one that overlaps no
other label, no marker and stays inside the axes.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, MaxNLocator

from eseg_cli.analysis import paper, stats
from eseg_cli.analysis.ablate import ABLATIONS
from eseg_cli.analysis.profiler import profile_model
from eseg_cli.analysis.report import build_tables, collect_results, evidence_group
from eseg_cli.data.classes import colorize, palette_array
from eseg_cli.errors import EsegError
from eseg_cli.models import SCALES
from eseg_cli.run import Run
from eseg_cli.utils import atomic_write_bytes, atomic_write_json

FORMATS = ("png", "svg")
DPI = 150  # the figure is laid out at the dpi it is saved at, so label placement holds in the file


def _mpl():
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
    grid over the axes, nearest first; a position is only taken if the label's anchor is nearer to its own
    point than to any other marker (:func:`label_anchor`), so no label reads as another point's. A thin
    leader line joins a label placed away from its point.
    Only if the axes have no free room at all does a label overlap (beside its point).
    """
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

    markers = np.asarray([*pts, *extra], dtype=float).reshape(-1, 2)

    def ok(boxes: np.ndarray, own, strict: bool) -> np.ndarray:
        """Which candidate boxes (N x 4) are inside the axes, clear of every taken box and (``strict``) read as
        the label of ``own``: no other marker nearer to the label's anchor (:func:`label_anchor`)."""
        inside = (boxes[:, 0] >= ab.x0 + pad) & (boxes[:, 2] <= ab.x1 - pad) & \
                 (boxes[:, 1] >= ab.y0 + pad) & (boxes[:, 3] <= ab.y1 - pad)
        t = np.asarray(taken, dtype=float).reshape(-1, 4)
        hit = (boxes[:, None, 0] < t[None, :, 2] + pad) & (t[None, :, 0] < boxes[:, None, 2] + pad) & \
              (boxes[:, None, 1] < t[None, :, 3] + pad) & (t[None, :, 1] < boxes[:, None, 3] + pad)
        good = inside & ~hit.any(axis=1)
        if strict and len(markers):
            anchor = np.stack([np.clip(own[0], boxes[:, 0], boxes[:, 2]), np.clip(own[1], boxes[:, 1], boxes[:, 3])], 1)
            d_own = ((anchor - np.asarray(own)) ** 2).sum(1)
            others = markers[~np.all(np.isclose(markers, own), axis=1)]
            if len(others):
                d_other = ((anchor[:, None, :] - others[None, :, :]) ** 2).sum(2).min(1)
                good &= d_other > d_own
        return good

    def boxes_for(cands, px_x, px_y, w, h) -> np.ndarray:
        ox = np.array([c[0] for c in cands], float) * px + px_x
        oy = np.array([c[1] for c in cands], float) * px + px_y
        ha = np.array([c[2] for c in cands])
        va = np.array([c[3] for c in cands])
        x0 = np.where(ha == "left", ox, np.where(ha == "right", ox - w, ox - w / 2))
        y0 = np.where(va == "bottom", oy, np.where(va == "top", oy - h, oy - h / 2))
        return np.stack([x0, y0, x0 + w, y0 + h], 1)

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
        boxes = boxes_for(candidates, px_x, px_y, w, h)
        chosen = None
        own = (float(px_x), float(px_y))
        for strict in (True, False):  # where no free spot reads as its own, a free one (with a leader line)
            good = np.flatnonzero(ok(boxes, own, strict))
            if len(good):
                i = int(good[0])
                chosen = (*candidates[i], tuple(boxes[i]))
                break
        if chosen is None:  # no room anywhere: keep the label beside its point rather than drop it
            chosen = (7, 0, "left", "center", tuple(boxes_for([(7, 0, "left", "center")], px_x, px_y, w, h)[0]))
        ox, oy, ha, va, b = chosen
        reads_as_own = bool(ok(np.asarray([b]), own, True)[0]) or not len(markers)
        far = (ox * ox + oy * oy) ** 0.5 > 12 or not reads_as_own
        t = ax.annotate(label, (x, y), xytext=(ox, oy), textcoords="offset points", ha=ha, va=va,
                        fontsize=fontsize, color=color, zorder=5,
                        arrowprops=dict(arrowstyle="-", lw=0.5, color="0.55", shrinkA=0, shrinkB=3) if far else None)
        taken.append(b)
        artists.append(t)
    return artists


def label_anchor(box, point) -> tuple[float, float]:
    """Where a label attaches to its point: the point of the label's box ``(x0, y0, x1, y1)`` closest to
    ``point`` (display coordinates)."""
    return (min(max(point[0], box[0]), box[2]), min(max(point[1], box[1]), box[3]))


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
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

    Kinds: ``eseg`` and ``peer`` (paper FLOPs, paper mIoU), ``eseg+data`` and ``peer+data`` (extra data),
    ``eseg measured`` (this build's fvcore FLOPs at a Cityscapes mIoU measured here; only where one was).
    Rows without FLOPs in the paper cannot be placed and are left out, and so are multi-scale numbers.
    """
    rows = []
    for r in table4.to_dict("records"):
        name, fl, miou = r["Model"], r["FLOPs B (paper)"], r["mIoU (paper)"]
        if _missing(fl) or r["mIoU note"]:
            continue
        is_eseg = name.startswith("ESeg")
        rows.append({"label": name, "flops_b": float(fl), "miou": float(miou), "kind": "eseg" if is_eseg else "peer"})
        extra = r["mIoU w/ extra (paper)"]
        if not _missing(extra):
            rows.append({"label": f"{name} +data", "flops_b": float(fl), "miou": float(extra),
                         "kind": "eseg+data" if is_eseg else "peer+data"})
        meas, m_miou = r.get("FLOPs B (total)"), r.get("mIoU (measured)")
        if is_eseg and not _missing(meas) and not _missing(m_miou):
            rows.append({"label": f"{name} (here)", "flops_b": float(meas), "miou": float(m_miou),
                         "kind": "eseg measured"})
    return pd.DataFrame(rows, columns=["label", "flops_b", "miou", "kind"])


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def figure1_flops(table4: pd.DataFrame) -> pd.DataFrame:
    """Figure 1's panel (b): ESeg's FLOPs as the paper gives them and as measured here (fvcore total and
    convolutions only), one row per ESeg model of Table 4."""
    rows = []
    for r in table4.to_dict("records"):
        if r["Model"].startswith("ESeg") and not _missing(r["FLOPs B (paper)"]):
            rows.append({"model": r["Model"], "paper": float(r["FLOPs B (paper)"]),
                         "total": None if _missing(r.get("FLOPs B (total)")) else float(r["FLOPs B (total)"]),
                         "conv": None if _missing(r.get("FLOPs B (conv)")) else float(r["FLOPs B (conv)"])})
    return pd.DataFrame(rows, columns=["model", "paper", "total", "conv"])


_STYLE = {
    "eseg": dict(marker="o", s=46, color="tab:red", label="ESeg (paper)", zorder=4),
    "eseg+data": dict(marker="*", s=90, color="tab:red", label="ESeg +extra data (paper)", zorder=4),
    "eseg measured": dict(marker="o", s=60, facecolors="none", edgecolors="black", linewidths=1.4,
                          label="ESeg measured here (fvcore FLOPs, Cityscapes mIoU)", zorder=5),
    "peer": dict(marker="s", s=30, color="tab:blue", label="others (paper, Table 4)", zorder=3),
    "peer+data": dict(marker="*", s=70, color="tab:blue", label="others +extra data (paper)", zorder=3),
}
_FLOPS_BARS = (("paper", "paper (TensorFlow count)", "tab:red"), ("total", "measured here, fvcore total", "0.35"),
               ("conv", "measured here, convolutions only", "0.7"))


def plot_figure1(table4: pd.DataFrame, out_dir: str | Path | None = None):
    """Figure 1 in two panels: (a) FLOPs (log x, billions at 1024x2048) vs Cityscapes val mIoU, the paper's
    points (and any mIoU measured here on Cityscapes); (b) ESeg's FLOPs, paper vs measured here, as bars so
    the measured values are never hidden under the paper's markers. Returns ``(fig, points, paths)``."""
    plt = _mpl()
    pts = figure1_points(table4)
    if pts.empty:
        raise EsegError("Table 4 has no rows with FLOPs to plot; check eseg_cli/resources/paper/table4.csv")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 6.5), dpi=DPI, gridspec_kw={"width_ratios": [2.1, 1]})
    for kind, style in _STYLE.items():
        sub = pts[pts.kind == kind]
        if len(sub):
            ax.scatter(sub.flops_b, sub.miou, gid=kind, **style)
    es = pts[pts.kind == "eseg"].sort_values("flops_b")
    ax.plot(es.flops_b, es.miou, color="tab:red", lw=1.2, zorder=2)
    ed = pts[pts.kind == "eseg+data"].sort_values("flops_b")
    ax.plot(ed.flops_b, ed.miou, color="tab:red", lw=1, ls="--", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs (billions of multiply-adds at 1024x2048, log scale)")
    ax.set_ylabel("Cityscapes val mIoU (%)")
    ax.set_title("(a) FLOPs vs accuracy on Cityscapes (the paper's numbers)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    lo, hi = pts.flops_b.min(), pts.flops_b.max()
    ax.set_xlim(lo / 1.8, hi * 2.2)
    ax.set_ylim(pts.miou.min() - 1.0, pts.miou.max() + 0.8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    fl = figure1_flops(table4)
    height = 0.26
    for j, (col, label, color) in enumerate(_FLOPS_BARS):
        ys = [i + (j - 1) * height for i in range(len(fl))]
        vals = [0 if _missing(v) else v for v in fl[col]]
        bx.barh(ys, vals, height=height * 0.95, color=color, label=label, gid=f"flops {col}")
        for y, v in zip(ys, fl[col], strict=True):
            bx.text((0 if _missing(v) else v) * 1.01 + 1, y, "not measured" if _missing(v) else f"{v:.1f}",
                    va="center", fontsize=7)
    bx.set_yticks(range(len(fl)), list(fl.model))
    bx.invert_yaxis()
    bx.set_xlim(0, (max(fl[["paper", "total", "conv"]].max(skipna=True).max(), 1)) * 1.25)
    bx.set_xlabel("FLOPs (billions of multiply-adds at 1024x2048)")
    bx.set_title("(b) ESeg's FLOPs: the paper vs measured here", fontsize=10)
    bx.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    bx.grid(True, axis="x", alpha=0.25)
    fig.suptitle("Figure 1: FLOPs vs accuracy", fontsize=11)
    fig.tight_layout()  # before placing labels: they are laid out in the final axes
    place_labels(ax, list(pts.flops_b), list(pts.miou), list(pts.label))
    paths = _save(fig, Path(out_dir), "figure1") if out_dir is not None else []
    return fig, pts, paths


# ----------------------------------------------------------------------------- Figure 4

def read_profiles(paths) -> list[dict]:
    """FPS rows for Figure 4 from JSON files (a folder: its ``*.json``): ``eseg profile --json`` output (an
    object, or a list with ``--all``) and benchmark reports (``benchmarks/peers.py``'s ``fps_best_e2e``, or
    rows under ``results``/``rows``). Every object with ``model`` and ``fps`` counts."""
    rows = []
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    for p in files:
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EsegError(f"'profiles' {p} is not readable profiler JSON: {e}", field="profiles") from None
        if isinstance(data, dict):
            data = data.get("fps_best_e2e") or data.get("results") or data.get("rows") or [data]
        for r in data if isinstance(data, list) else []:
            if isinstance(r, dict) and r.get("fps") and r.get("model"):
                rows.append(r)
    return rows


def _display_name(key: str) -> str:
    return SCALES[key].display_name if key in SCALES else key


def figure4_points(paper_points: pd.DataFrame, measured: list[dict]) -> pd.DataFrame:
    """Figure 4's points: the paper's (``figure4.csv``: FPS on the paper's GPU and Cityscapes mIoU) and this
    project's measured FPS (kind ``measured``, no mIoU: nothing here was trained on Cityscapes). The latest
    row per model and device wins."""
    rows = [{"label": r["model"], "key": r["key"], "fps": float(r["fps"]), "miou": float(r["miou"]),
             "kind": "eseg" if r["model"].startswith("ESeg") else "peer", "device": "paper", "resolution": "",
             "mode": ""}
            for r in paper_points.to_dict("records")]
    latest: dict[tuple, dict] = {}
    for m in measured:
        res = str(m.get("latency_resolution") or m.get("resolution") or "")
        latest[(m["model"], m.get("device", ""), res)] = m
    for (key, device, res), m in latest.items():
        rows.append({"label": _display_name(key), "key": key, "fps": float(m["fps"]), "miou": float("nan"),
                     "kind": "measured", "device": device or "this device", "resolution": res,
                     "mode": str(m.get("mode") or "")})
    return pd.DataFrame(rows, columns=["label", "key", "fps", "miou", "kind", "device", "resolution", "mode"])


def plot_figure4(points: pd.DataFrame, out_dir: str | Path | None = None, *, resolution: str | None = None):
    """Figure 4 in two panels that are never compared on one axis: (a) the paper's FPS (its GPU) vs
    Cityscapes mIoU; (b) the FPS measured here, one bar per model, device and resolution named.
    Returns ``(fig, points, paths)``."""
    plt = _mpl()
    if points.empty:
        raise EsegError("no Figure 4 points to plot; check eseg_cli/resources/paper/figure4.csv")

    paper_pts = points[points.kind != "measured"]
    meas = points[points.kind == "measured"].sort_values(["device", "resolution", "fps"])
    wide = len(meas) > 6  # long bar labels (model, device, resolution, mode): give panel (b) more room
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15 if wide else 13, 5.2 + 0.15 * max(len(meas) - 8, 0)), dpi=DPI,
                                 gridspec_kw={"width_ratios": [1, 1.25] if wide else [1.15, 1]})
    styles = {"eseg": dict(marker="o", s=50, color="tab:red", label="ESeg-Lite (paper)"),
              "peer": dict(marker="s", s=36, color="tab:blue", label="real-time peers (paper)")}
    for kind, st in styles.items():
        sub = paper_pts[paper_pts.kind == kind]
        if len(sub):
            ax.scatter(sub.fps, sub.miou, gid=kind, zorder=4, **st)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(int(v))[0] in "25" else ""))
    ax.set_xlabel("frames per second on the paper's GPU (as the paper reports them; log scale)")
    ax.set_ylabel("Cityscapes val mIoU (%)")
    ax.set_title("(a) the paper: speed vs accuracy, real-time family", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    if len(paper_pts):
        ax.set_xlim(paper_pts.fps.min() / 1.6, paper_pts.fps.max() * 1.6)
        ax.set_ylim(paper_pts.miou.min() - 1.5, paper_pts.miou.max() + 1.5)
        ax.legend(loc="lower left", fontsize=8)
    if len(meas):
        varying = [k for k in ("device", "resolution") if len({v for v in meas[k] if v}) > 1]
        labels = [", ".join(v for v in [r["label"], *(r[k] for k in varying), r["mode"]] if v)
                  for r in meas.to_dict("records")]
        bx.barh(range(len(meas)), meas.fps.to_numpy(), color="tab:green", height=0.6, gid="measured")
        bx.set_yticks(range(len(meas)), labels, fontsize=8)
        for i, v in enumerate(meas.fps):
            bx.text(v * 1.08, i, f"{v:.3g} FPS", va="center", fontsize=8)
        bx.set_xscale("log")
        bx.xaxis.set_major_formatter(plain)
        lo, hi = meas.fps.min() / 2, meas.fps.max() * 4
        if hi / lo < 300:  # minor labels (2, 5, 20, ...) only where they do not crowd each other
            bx.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        else:
            bx.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        bx.set_xlim(lo, hi)
        devices = ", ".join(sorted(set(meas.device)))
        res = resolution or ", ".join(sorted({r for r in meas.resolution if r})) or "?"
        bx.set_title(f"(b) measured here: {devices}\nbatch 1 at {res}; no Cityscapes mIoU (not trained here)",
                     fontsize=9)
        bx.set_xlabel("frames per second on this project's device (log scale)")
        bx.grid(True, axis="x", which="both", alpha=0.25)
    else:
        bx.axis("off")
        bx.text(0.5, 0.5, "(b) no FPS measured here yet:\neseg plot --measure-fps, or the benchmark's JSON",
                ha="center", va="center", fontsize=9, transform=bx.transAxes)
    fig.suptitle("Figure 4: inference speed of the real-time family", fontsize=11)
    fig.tight_layout()
    if len(paper_pts):
        place_labels(ax, list(paper_pts.fps), list(paper_pts.miou),
                     [f"{r['label']} {r['fps']:.3g} FPS" for r in paper_pts.to_dict("records")],
                     avoid_artists=[ax.get_legend()])
    paths = _save(fig, Path(out_dir), "figure4") if out_dir is not None else []
    return fig, points, paths


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


_HASH_SUFFIX = re.compile(r"-[0-9a-f]{12}$")  # `eseg ablate` names run folders <cell>-s<seed>-<signature>
_SEED_SUFFIX = re.compile(r"-s\d+$")


def _base_name(run_dir: Path) -> str:
    return _SEED_SUFFIX.sub("", _HASH_SUFFIX.sub("", run_dir.name))


def _run_label(run_dir: Path, runs: list[Path]) -> str:
    """A run's legend name: its folder name without the ablation's signature and seed (the seeds of one cell share
    one name, so they are drawn as one mean with a band), prefixed by its parent when another folder has runs of
    the same name."""
    own = _base_name(run_dir)
    parents = {r.parent for r in runs if _base_name(r) == own}
    return own if len(parents) == 1 else f"{run_dir.parent.name}/{own}"


def run_setting(run_dir: Path) -> dict:
    """Model, dataset, steps and seed of a run folder (from its ``config.yaml``; missing values are None)."""
    cfg = Run(run_dir).load_config() or {}
    return {k: cfg.get(key) for k, key in (("model", "scale"), ("dataset", "dataset"), ("steps", "steps"),
                                           ("seed", "seed"))}


def _setting_text(s: dict) -> str:
    return f"{s['model'] or '?'} on {s['dataset'] or '?'}, {s['steps'] or '?'} steps"


def _seed_mean(frames: list[pd.DataFrame], column: str) -> pd.DataFrame:
    """Mean and sample std of ``column`` over runs, at the steps every run logged (std NaN with one run)."""
    parts = [f[["step", column]].dropna() for f in frames if not f.empty and column in f]
    if not parts:
        return pd.DataFrame(columns=["step", "mean", "std"])
    common = set.intersection(*(set(p_.step) for p_ in parts))
    joined = pd.concat([p_[p_.step.isin(common)] for p_ in parts])
    g = joined.groupby("step")[column]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1)}).reset_index()


#: experiments whose runs are drawn apart: ``eseg ablate``'s kinds and ``benchmarks/selftrain.py``'s folder
EXPERIMENTS = (*ABLATIONS, "selftrain")


def runs_by_ablation(run_dirs: list[Path]) -> dict[str, list[Path]]:
    """Run folders grouped by the experiment they belong to (the nearest folder above named ``decoder``, ``levels``,
    ``fusion`` or ``selftrain``, as ``eseg ablate``, ``reports/ablate`` and ``reports/selftrain`` lay them out);
    other runs under ``""``."""
    out: dict[str, list[Path]] = {}
    for run in run_dirs:
        kind = next((p.name for p in Path(run).parents if p.name in EXPERIMENTS), "")
        out.setdefault(kind, []).append(run)
    return out


def curve_figures(run_dirs: list[Path], out_dir: str | Path | None = None) -> list[tuple[str, tuple]]:
    """:func:`plot_training_curves` once per ablation among ``run_dirs`` (``training_curves_<kind>``), or once for
    all when they are not from several ablations (``training_curves``): ``[(kind, (fig, data, paths))]``."""
    groups = runs_by_ablation(run_dirs)
    if len(groups) == 1:
        return [(next(iter(groups)), plot_training_curves(run_dirs, out_dir))]
    return [(kind, plot_training_curves(runs, out_dir, stem=f"training_curves_{kind or 'other'}"))
            for kind, runs in groups.items()]


def plot_training_curves(run_dirs: list[Path], out_dir: str | Path | None = None, stem: str = "training_curves"):
    """Training loss, learning rate and validation mIoU vs step, step ticks on integers, model/dataset/steps/seeds in
    the titles (or in the legend when runs differ). The seeds of one cell (run folders ``<cell>-s<seed>-<hash>``
    of one setting) are drawn as their mean with a band of ± one sample std, at the steps every seed logged.
    Returns ``(fig, data, paths)`` where ``data`` maps each label to ``{"log": df, "val": df, "setting": dict,
    "seeds": [...]}`` (with several seeds, ``log``/``val`` hold ``step``, ``mean`` and ``std`` per column)."""
    plt = _mpl()

    if not run_dirs:
        raise EsegError("no training runs found (folders with log.jsonl) among the runs given; give a run folder or a "
                        "folder of runs")
    fig, (ax_l, ax_r, ax_m) = plt.subplots(1, 3, figsize=(16, 4.8), dpi=DPI)
    settings = {run: run_setting(run) for run in run_dirs}
    groups: dict[tuple, list[Path]] = {}
    for run in run_dirs:
        s = settings[run]
        groups.setdefault((_run_label(run, run_dirs), s["model"], s["dataset"], s["steps"]), []).append(run)
    # what every run shares goes in the titles; what differs goes in each run's legend entry
    same = {k: len({str(s[k]) for s in settings.values()}) == 1 for k in ("model", "dataset", "steps")}
    first = next(iter(settings.values()))
    shared = ", ".join(f"{first[k] or '?'}" + (" steps" if k == "steps" else "") if k != "dataset"
                       else f"on {first[k] or '?'}" for k in ("model", "dataset", "steps") if same[k])
    n_seeds = {len(runs) for runs in groups.values()}
    if n_seeds != {1}:
        shared += (f", {next(iter(n_seeds))} seeds" if len(n_seeds) == 1 else ", several seeds") + \
            " (mean, band: ± 1 std)"
    data = {}
    for (label, *_), runs in groups.items():
        setting = settings[runs[0]]
        differ = [f"{setting[k] or '?'}" + (" steps" if k == "steps" else "") if k != "dataset"
                  else f"on {setting[k] or '?'}" for k in ("model", "dataset", "steps") if not same[k]]
        if len(n_seeds) > 1:  # the seeds differ between cells: each legend entry says how many
            differ.append(f"{len(runs)} seed{'s' if len(runs) > 1 else ''}")
        name = label + (f" ({', '.join(differ)})" if differ else "")
        reads = [read_run(r) for r in runs]
        seeds = sorted(settings[r]["seed"] for r in runs if settings[r]["seed"] is not None)
        if len(runs) == 1:
            d = reads[0]
            data[name] = {**d, "setting": setting, "seeds": seeds}
            log, val = d["log"], d["val"]
            if not log.empty and "loss" in log:
                ax_l.plot(log.step, log.loss, label=name, lw=1.3)
            if not log.empty and "lr" in log:
                ax_r.plot(log.step, log.lr, label=name, lw=1.3)
            if not val.empty and "mIoU" in val:
                ax_m.plot(val.step, val.mIoU, marker="o", ms=3.5, label=name, lw=1.3)
            continue
        loss, lr = _seed_mean([d["log"] for d in reads], "loss"), _seed_mean([d["log"] for d in reads], "lr")
        miou = _seed_mean([d["val"] for d in reads], "mIoU")
        data[name] = {"log": loss.rename(columns={"mean": "loss", "std": "loss_std"}).assign(
            lr=lr["mean"].to_numpy() if len(lr) == len(loss) else np.nan),
            "val": miou.rename(columns={"mean": "mIoU", "std": "mIoU_std"}), "setting": setting, "seeds": seeds}
        for ax, df, kw in ((ax_l, loss, {}), (ax_r, lr, {}), (ax_m, miou, {"marker": "o", "ms": 3.5})):
            if df.empty:
                continue
            (line,) = ax.plot(df.step, df["mean"], label=name, lw=1.3, **kw)
            ax.fill_between(df.step, df["mean"] - df["std"], df["mean"] + df["std"], color=line.get_color(),
                            alpha=0.2, lw=0)
    suffix = f"\n{shared}" if shared else ""
    ax_l.set(xlabel="step", ylabel="training loss (mean over the log interval)", title="Training loss" + suffix)
    ax_r.set(xlabel="step", ylabel="learning rate", title="Learning rate" + suffix)
    ax_m.set(xlabel="step", ylabel="validation mIoU (%)", title="Validation mIoU" + suffix)
    # one step range for all three panels (a validation every N steps is read against the same axis)
    steps = [float(x) for ax in (ax_l, ax_r, ax_m) for line in ax.lines for x in line.get_xdata()]
    lo, hi = (min(steps), max(steps)) if steps else (0.0, 1.0)
    lo = min(lo, 0.0)
    pad = max((hi - lo) * 0.03, 0.5)
    for ax in (ax_l, ax_r, ax_m):
        ax.title.set_fontsize(10)
        ax.set_xlim(lo - pad, hi + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(True, alpha=0.3)
    ax_r.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if ax_m.lines:
        ax_m.legend(fontsize=7, loc="best")
    elif ax_l.lines:
        ax_l.legend(fontsize=7, loc="best")
    fig.tight_layout()
    paths = _save(fig, Path(out_dir), stem) if out_dir is not None else []
    return fig, data, paths


# ----------------------------------------------------------------------------- seeds of an ablation

def plot_ablation_seeds(rows: list[dict], out_dir: str | Path | None = None):
    """Per ablation (decoder, levels, fusion) with an evidence group (see
    :func:`eseg_cli.analysis.report.evidence_group`): each cell's final val mIoU per seed (dots) and the mean with
    an error bar of ± one sample std, titled with the dataset, protocol, seeds and steps. Returns ``(fig, data,
    paths)``, ``data`` mapping each ablation to its cells' summaries; raises when no ablation has one."""
    groups = {k: g for k in ("decoder", "levels", "fusion") if (g := evidence_group(rows, k))}
    if not groups:
        raise EsegError("no trained ablation at its protocol's steps among the results (smoke runs are not "
                        "plotted); train one first (eseg_cli.analysis.ablate.run_ablation with train and seeds)")
    plt = _mpl()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.6), dpi=DPI, squeeze=False)
    data = {}
    rng = np.random.default_rng(0)  # a fixed jitter: regenerated figures are identical
    for ax, (kind, g) in zip(axes[0], groups.items(), strict=True):
        summ = stats.cell_summaries(g)
        data[kind] = {c: s.to_dict() for c, s in summ.items()}
        seeds = sorted({seed for s in summ.values() for seed in s.values})
        jitter = dict(zip(seeds, rng.uniform(-0.07, 0.07, len(seeds)), strict=True))
        for seed in seeds:  # one faint line per seed across the cells: the pairing the differences use
            pts = [(i - 0.1 + jitter[seed], s.values[seed]) for i, s in enumerate(summ.values()) if seed in s.values]
            ax.plot(*zip(*pts, strict=True), color="0.6", lw=0.6, alpha=0.6, zorder=1, gid="pair")
        for i, s in enumerate(summ.values()):
            ys = list(s.values.values())
            ax.scatter([i - 0.1 + jitter[k] for k in s.values], ys, s=18, color="tab:blue", alpha=0.8, zorder=2,
                       gid="seed", label="one seed (lines join a seed's cells)" if i == 0 else None)
            ax.errorbar([i + 0.15], [s.mean], yerr=[s.std or 0.0], fmt="o", color="black", capsize=4, zorder=3,
                        gid="mean", label="mean ± 1 std" if i == 0 else None)
        ax.set_xticks(range(len(summ)), list(summ), rotation=20, ha="right")
        ax.set_xlim(-0.5, len(summ) - 0.5)
        ax.set(ylabel="final val mIoU (%)", title=f"eseg ablate {kind}\n{stats.describe_group(g)}")
        ax.title.set_fontsize(10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    paths = _save(fig, Path(out_dir), "ablation_seeds") if out_dir is not None else []
    return fig, data, paths


# ----------------------------------------------------------------------------- all figures

def measure_fps(models: list[str], *, resolution: tuple[int, int] = (1024, 2048), device: str = "auto",
                runs: int = 5, warmup: int = 2, **kw) -> list[dict]:
    """FPS of registered models on this device, as ``eseg profile`` measures it (no FLOPs)."""
    return [profile_model(m, resolution=resolution, flops=False, latency=True, device=device, runs=runs,
                          warmup=warmup, **kw) for m in models]


REALTIME = ("eseg-lite-s", "eseg-lite-m", "eseg-lite-l")


def generate_figures(results=(), out_dir: str | Path = "reports/figures", *, profiles=(), measure_fps_now: bool = False,
                     fps_resolution: tuple[int, int] = (1024, 2048), device: str = "auto", runs: int = 5,
                     measure_missing: bool = True, which=("figure1", "figure4", "curves", "seeds")) -> dict:
    """Draw the requested figures into ``out_dir`` from the same tables ``eseg report`` writes.

    Figure 4's measured points come from ``profiles`` (``eseg profile --json`` files) and, with
    ``measure_fps_now``, from timing the ESeg-Lite models here (saved as ``fps_measured.json``).
    The per-seed figure (``seeds``) needs an ablation trained at its protocol's steps in ``results``.
    Training curves need run folders in ``results``; without any, that figure is skipped (reported
    under ``skipped``).
    """
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

            # kept beside the figure so later runs can reuse it: --profile <out>/fps_measured.json
            summary["files"].append(str(atomic_write_json(out_dir / "fps_measured.json", now)))
            measured += now
        fig, pts, paths = plot_figure4(figure4_points(paper.load("figure4"), measured), out_dir)
        plt.close(fig)
        summary["files"] += [str(p) for p in paths]
        summary["points"]["figure4"] = json.loads(pts.to_json(orient="records"))
    if "curves" in which:
        runs_found = find_runs(results)
        if runs_found:
            for _, (fig, _, paths) in curve_figures(runs_found, out_dir):
                plt.close(fig)
                summary["files"] += [str(p) for p in paths]
            summary["points"]["curves"] = [str(r) for r in runs_found]
        else:
            summary["skipped"]["curves"] = "no run folders (with log.jsonl) among the results given"
    if "seeds" in which:
        try:
            fig, data, paths = plot_ablation_seeds(collect_results(results)["ablate"] if results else [], out_dir)
        except EsegError as e:
            summary["skipped"]["seeds"] = str(e)
        else:
            plt.close(fig)
            summary["files"] += [str(p) for p in paths]
            summary["points"]["seeds"] = data
    return summary


# ----------------------------------------------------------------------------- per-run figures

def read_confusion(path: str | Path) -> pd.DataFrame:
    """``eval_confusion.csv`` (rows: true class, columns: predicted class, pixel counts) as a DataFrame."""
    path = Path(path)
    try:
        cm = pd.read_csv(path, index_col=0, keep_default_na=False)  # "n/a" stays text: named below, not NaN
    except (OSError, ValueError) as e:
        raise EsegError(f"{path} is not a readable confusion-matrix CSV (as `eseg eval` writes): {e}") from None
    if cm.shape[0] != cm.shape[1] or not cm.shape[0]:
        raise EsegError(f"{path}: a confusion matrix must be square, got {cm.shape[0]}x{cm.shape[1]}")
    counts = cm.apply(pd.to_numeric, errors="coerce")
    bad = [(r, c) for r in cm.index for c in cm.columns if not (counts.at[r, c] >= 0)]  # also catches NaN
    if bad:
        r, c = bad[0]
        raise EsegError(f"{path}: cell ({r}, {c}) is '{cm.at[r, c]}', not a pixel count; evaluate again "
                        "(`eseg eval`) to rewrite the file")
    cm = counts
    cm.index.name = "true"
    return cm


def row_normalize(cm: pd.DataFrame) -> pd.DataFrame:
    """Each true-class row as fractions of its pixels (rows without pixels stay NaN: the class never occurs)."""
    sums = cm.sum(axis=1).replace(0, float("nan"))
    return cm.div(sums, axis=0)


def plot_confusion(cm: pd.DataFrame, out_dir: str | Path | None = None, *, title: str = "Confusion matrix",
                   stem: str = "confusion"):
    """A row-normalised confusion-matrix heatmap (a cell: the share of a true class's pixels predicted as a
    class). Returns ``(fig, normalised DataFrame, paths)``."""
    plt = _mpl()
    norm = row_normalize(cm)
    n = len(norm)
    size = max(5.0, 0.34 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=DPI)
    im = ax.imshow(norm.to_numpy(dtype=float), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(n), [str(c) for c in norm.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(n), [str(c) for c in norm.index], fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if n <= 25:  # the diagonal in numbers where they still fit
        for i in range(n):
            v = norm.iat[i, i]
            if not math.isnan(v):
                ax.text(i, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if v > 0.6 else "0.1")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("share of the true class's pixels (row-normalised)")
    fig.tight_layout()
    paths = _save(fig, Path(out_dir), stem) if out_dir is not None else []
    return fig, norm, paths


def plot_per_class_iou(per_class: dict, out_dir: str | Path | None = None, *, title: str = "Per-class IoU",
                       stem: str = "per_class_iou", miou: float | None = None):
    """Horizontal bars of each class's IoU (%), in class order; classes without an IoU (absent from both
    prediction and ground truth) are listed as "n/a". Returns ``(fig, Series, paths)``."""
    plt = _mpl()
    iou = pd.Series({name: (v.get("IoU") if isinstance(v, dict) else v) for name, v in per_class.items()},
                    dtype=float)
    if iou.empty:
        raise EsegError("no per-class IoU to plot")
    fig, ax = plt.subplots(figsize=(7.5, 0.26 * len(iou) + 1.4), dpi=DPI)
    y = range(len(iou))
    ax.barh(list(y), iou.fillna(0).to_numpy(), color="tab:blue", height=0.7, gid="iou")
    for i, v in enumerate(iou):
        ax.text((0 if math.isnan(v) else v) + 1, i, "n/a" if math.isnan(v) else f"{v:.1f}", va="center", fontsize=7)
    ax.set_yticks(list(y), list(iou.index), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    if miou is not None:
        ax.axvline(miou, color="tab:red", lw=1, ls="--", label=f"mIoU {miou:.2f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    paths = _save(fig, Path(out_dir), stem) if out_dir is not None else []
    return fig, iou, paths


def error_map(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The image dimmed to grey where the prediction is right, red where it is wrong, black where ignored."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.45
    out = grey.copy()
    wrong = (pred != gt) & (gt != ignore_index)
    out[wrong] = (230, 30, 30)
    out[gt == ignore_index] = 0
    return out.astype(np.uint8)


def plot_predictions(samples: list[dict], palette, out_dir: str | Path | None = None, *, title: str = "",
                     ignore_index: int = 255, stem: str = "predictions"):
    """A grid, one row per sample: image, ground truth, prediction (class colours) and errors (red: wrong
    pixel, black: ignored). ``samples``: ``{"name", "image" HxWx3 uint8, "gt" HxW, "pred" HxW}``.
    Returns ``(fig, per-sample pixel accuracy list, paths)``."""
    plt = _mpl()
    if not samples:
        raise EsegError("no samples to draw")
    pal = palette_array(palette)
    h, w = samples[0]["gt"].shape
    fig, axes = plt.subplots(len(samples), 4, figsize=(12, 3 * len(samples) * h / w + 0.6), dpi=DPI, squeeze=False)
    accs = []
    for row, s in zip(axes, samples, strict=True):
        gt, pred = np.asarray(s["gt"]), np.asarray(s["pred"])
        valid = gt != ignore_index
        acc = float((pred[valid] == gt[valid]).mean() * 100) if valid.any() else float("nan")
        accs.append(acc)
        tiles = [s["image"], colorize(gt, pal), colorize(pred, pal),
                 error_map(s["image"], gt, pred, ignore_index)]
        names = ["image", "ground truth", "prediction", f"errors (red), pixel acc {acc:.1f}%"]
        for ax, tile, name in zip(row, tiles, names, strict=True):
            ax.imshow(tile, interpolation="nearest")
            ax.set_title(f"{s['name']}: {name}" if name == "image" else name, fontsize=7)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths = _save(fig, Path(out_dir), stem) if out_dir is not None else []
    return fig, accs, paths
