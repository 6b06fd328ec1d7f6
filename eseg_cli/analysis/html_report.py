"""One self-contained HTML page with everything ``eseg report`` knows: the paper's tables beside this
build's measurements, Figures 1 and 4, training curves and, for every run, per-class IoU, the
row-normalised confusion matrix, sample predictions and the resolved config.

Figures are embedded as PNG data URIs and the page has no scripts and no external resources, so it can
be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import pandas as pd

from eseg_cli.analysis import paper, plot
from eseg_cli.analysis.report import NOTES, TABLE_TITLES, collect_results, format_frame
from eseg_cli.analysis.runs import RunRecord, confusion_figure, per_class_figure, read_run_record, sample_predictions
from eseg_cli.errors import EsegError
from eseg_cli.utils import atomic_write_text

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1180px;
     padding:1.5rem;color:#1d232a;background:#fff;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{border-bottom:2px solid #d0d7de;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin:1.6rem 0 .5rem} nav a{margin-right:1rem} .muted{color:#57606a;font-size:.9rem}
.scroll{overflow-x:auto;margin:.5rem 0 1rem} table{border-collapse:collapse;font-size:.82rem;white-space:nowrap}
th,td{padding:.25rem .6rem;border-bottom:1px solid #e5e8eb} th{background:#f6f8fa;text-align:center}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.txt{text-align:left}
figure{margin:1rem 0} figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:.85rem;color:#57606a} .grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
pre{background:#f6f8fa;padding:.8rem;overflow-x:auto;font-size:.8rem} .run{border-top:1px solid #d0d7de}
"""


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=plot.DPI if fig.get_figwidth() < 9 else 110, bbox_inches="tight")
    plot._mpl().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig, caption: str, alt: str) -> str:
    return (f'<figure><img src="{_png_uri(fig)}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table_html(df: pd.DataFrame) -> str:
    """A table with the same fixed decimals as the Markdown/LaTeX ones, numbers right-aligned."""
    shown = format_frame(df)
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = "".join(f'<td class="{"num" if n else "txt"}">{html.escape(str(v))}</td>'
                        for v, n in zip(row, numeric, strict=True))
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _run_section(rec: RunRecord, samples: int, device: str) -> str:
    parts = [f'<section class="run" id="run-{html.escape(rec.name)}"><h3>{html.escape(rec.name)}</h3>',
             f'<p class="muted">{html.escape(rec.describe())} — folder <code>{html.escape(str(rec.path))}</code></p>']
    if rec.evals:
        rows = [{"evaluation": k, "mode": v.get("mode"), "images": v.get("images"), "mIoU": v.get("mIoU"),
                 "pixAcc": v.get("pixAcc"), "mAcc": v.get("mAcc"), "fwIoU": v.get("fwIoU")}
                for k, v in rec.evals.items()]
        parts.append(table_html(pd.DataFrame(rows)))
    figs = []
    pc = per_class_figure(rec)
    if pc:
        source, (fig, _, _) = pc
        figs.append(_figure(fig, f"Per-class IoU from {source}.", "per-class IoU bars"))
    cm = confusion_figure(rec)
    if cm:
        name, (fig, _, _) = cm
        figs.append(_figure(fig, f"Row-normalised confusion matrix of {name}: each row sums to 1.", "confusion"))
    if figs:
        parts.append(f'<div class="grid">{"".join(figs)}</div>')
    if not cm:
        parts.append('<p class="muted">No confusion matrix: run <code>eseg eval --checkpoint '
                     f'{html.escape(str(rec.path))}</code> to write one.</p>')
    if samples and rec.checkpoint is not None:
        preds, ds = sample_predictions(rec.checkpoint, samples, device=device)
        fig, _, _ = plot.plot_predictions(preds, ds.palette, ignore_index=ds.ignore_index,
                                          title=f"Sample predictions ({rec.checkpoint.name}) — {rec.describe()}")
        parts.append(_figure(fig, "Each row: image, ground truth, prediction, errors (red: wrong, black: ignored).",
                             "sample predictions"))
    elif samples:
        parts.append('<p class="muted">No checkpoint in this folder: no sample predictions.</p>')
    if rec.config_text:
        parts.append(f"<details><summary>resolved config.yaml</summary><pre>{html.escape(rec.config_text)}</pre>"
                     "</details>")
    parts.append("</section>")
    return "\n".join(parts)


CLAIMS_NOTE = (
    "Each claim 'A > B' is tested on the paired differences A - B of the final val mIoU on the same seeds (same "
    "initialisation, data order and augmentation). 95% CI: Student t on the paired differences. Verdict: holds when "
    "the interval is above 0, reversed when below, inconclusive at this budget otherwise (always with one seed). "
    "'Measured on' names the dataset: a proxy's differences test the direction of a claim there, they are not "
    "Cityscapes numbers. Smoke runs (shorter than their protocol) are never used."
)


def render_html(tables: dict[str, pd.DataFrame], *, figure1=None, figure4=None, curves=None, seeds=None,
                runs: list[RunRecord] = (), samples: int = 3, device: str = "cpu",
                title: str = "eseg report") -> str:
    """The page as a string. ``figure1``/``figure4``/``seeds`` are matplotlib figures and ``curves`` maps an
    ablation (or ``""``) to its training curves' figure (closed here)."""
    toc = ['<a href="#tables">Tables</a>', '<a href="#figures">Figures</a>']
    if runs:
        toc.append('<a href="#runs">Runs</a>')
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<header><h1>{html.escape(title)}</h1>",
           f'<p class="muted">Generated by <code>eseg report --html</code> on '
           f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}. The paper: Meng et al., '
           "<i>Revisiting Multi-Scale Feature Fusion for Semantic Segmentation</i>, 2022.</p>",
           f"<nav>{''.join(toc)}</nav></header>",
           '<h2 id="tables">Tables</h2>', f'<p class="muted">{html.escape(NOTES)}</p>']
    for name, df in tables.items():
        out += [f'<h3 id="{name}">{html.escape(TABLE_TITLES.get(name, name))}</h3>', table_html(df)]
        if name == "claims":
            out.append(f'<p class="muted">{html.escape(CLAIMS_NOTE)}</p>')
    out.append('<h2 id="figures">Figures</h2>')
    if figure1 is not None:
        out.append(_figure(figure1, "Figure 1: FLOPs vs Cityscapes mIoU (the paper's points; this build's measured "
                           "FLOPs in the second panel).", "Figure 1"))
    if figure4 is not None:
        out.append(_figure(figure4, "Figure 4: speed vs accuracy of the real-time family.", "Figure 4"))
    if seeds is not None:
        out.append(_figure(seeds, "Final val mIoU of each ablation cell: one dot per seed, the mean with an error "
                           "bar of ± one sample std.", "ablation seeds"))
    for kind, fig in (curves or {}).items():
        what = ("Self-training (benchmarks/selftrain.py): training" if kind == "selftrain" else
                f"eseg ablate {kind}: training" if kind else "Training")
        out.append(_figure(fig, f"{what} curves: loss, learning rate and validation mIoU per step (the seeds of a "
                           "cell: their mean, the band ± one std).", "training curves"))
    if runs:
        out.append('<h2 id="runs">Runs</h2>')
        out += [_run_section(r, samples, device) for r in runs]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def read_inputs(results=(), profiles=()) -> tuple[list[Path], list[RunRecord], list[dict]]:
    """Everything the page reads, read (and so checked) before anything is written: the run folders among
    ``results``, their records (config, logs, evaluations, confusion matrices) and the FPS rows of ``profiles``."""
    runs_found = plot.find_runs(results)
    return runs_found, [read_run_record(r) for r in runs_found], plot.read_profiles(profiles)


def write_html_report(tables: dict[str, pd.DataFrame], out_path: str | Path, *, results=(), profiles=(),
                      samples: int = 3, device: str = "cpu") -> Path:
    """Draw every figure from ``tables`` (and the runs and FPS files given) and write the page."""
    runs_found, records, measured = read_inputs(results, profiles)
    fig1, _, _ = plot.plot_figure1(tables["table4"])
    fig4, _, _ = plot.plot_figure4(plot.figure4_points(paper.load("figure4"), measured))
    curves = {kind: drawn[0] for kind, drawn in plot.curve_figures(runs_found)} if runs_found else None
    try:
        seeds = plot.plot_ablation_seeds(collect_results(results)["ablate"] if results else [])[0]
    except EsegError:
        seeds = None  # no ablation trained at its protocol's steps: nothing to draw
    page = render_html(tables, figure1=fig1, figure4=fig4, curves=curves, seeds=seeds, runs=records,
                       samples=samples, device=device)
    return atomic_write_text(out_path, page)
