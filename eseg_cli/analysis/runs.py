"""What a training run folder holds, read for reports: its resolved config, training and validation logs,
evaluations (``eval.json`` / ``eval_<mode>.json`` with their confusion CSVs) and sample predictions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from eseg_cli.analysis import plot
from eseg_cli.analysis.plot import read_confusion, read_run
from eseg_cli.engine.evaluator import eval_dataset
from eseg_cli.errors import EsegError
from eseg_cli.inference.predictor import Predictor
from eseg_cli.run import Run


@dataclass
class RunRecord:
    """One run folder's results. ``evals`` maps an evaluation's name (``eval``, ``eval_slide`` ...) to its JSON."""

    path: Path
    config: dict = field(default_factory=dict)
    config_text: str = ""
    log: pd.DataFrame = field(default_factory=pd.DataFrame)
    val: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: dict = field(default_factory=dict)
    evals: dict[str, dict] = field(default_factory=dict)
    confusions: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> Path | None:
        """``best.pt``, else ``last.pt``, else None."""
        try:
            return Run(self.path).checkpoint()
        except EsegError:
            return None

    def describe(self) -> str:
        """``lite-s on synthetic, 500 steps`` (model, dataset and schedule from the resolved config)."""
        c = self.config
        steps = self.summary.get("steps") or c.get("steps")
        return f"{c.get('scale', '?')} on {c.get('dataset', '?')}, {steps} steps"

    def per_class(self) -> tuple[str, dict, float | None] | None:
        """The per-class IoU to show: the whole-image evaluation if there is one, else the run's final
        validation. Returns ``(source, per_class, mIoU)`` or None."""
        for name in sorted(self.evals, key=_whole_first):
            e = self.evals[name]
            if e.get("per_class"):
                return name, e["per_class"], e.get("mIoU")
        final = self.summary.get("final_metrics") or {}
        if final.get("per_class"):
            return "final validation", final["per_class"], final.get("mIoU")
        return None


def _whole_first(name: str) -> tuple:
    """Evaluation names in display order: the whole-image one (``eval_whole``, or ``eval``) first."""
    return (name not in ("eval_whole", "eval"), name)


def read_run_record(path: str | Path) -> RunRecord:
    """Read everything a report shows about the run folder ``path``."""
    run = Run(path)
    rec = RunRecord(run.path)
    rec.config = run.load_config() or {}
    if rec.config:
        rec.config_text = run.config_path.read_text(encoding="utf-8")
    logs = read_run(run.path)
    rec.log, rec.val = logs["log"], logs["val"]
    rec.summary = run.read_summary() or {}
    for stem, paths in run.evaluations().items():
        try:
            data = json.loads(paths["json"].read_text(encoding="utf-8"))
        except ValueError as e:  # not JSON, or not UTF-8 text
            raise EsegError(f"{paths['json']} is not the JSON `eseg eval` writes ({type(e).__name__}: {e}); "
                            f"evaluate {run.path} again (`eseg eval`) to rewrite it") from None
        if isinstance(data, dict) and "mIoU" in data:
            rec.evals[stem] = data
            if paths["confusion_csv"].is_file():
                read_confusion(paths["confusion_csv"])  # checked now: a damaged file is named before any write
                rec.confusions[stem] = paths["confusion_csv"]
    return rec


def confusion(rec: RunRecord) -> tuple[str, pd.DataFrame] | None:
    """The confusion matrix of the run's whole-image evaluation (else of any evaluation), or None."""
    for name in sorted(rec.confusions, key=_whole_first):
        return name, read_confusion(rec.confusions[name])
    return None


def per_class_figure(rec: RunRecord, out_dir: str | Path | None = None):
    """The run's per-class IoU bars (whole-image evaluation first, else its final validation): ``(source,
    (fig, Series, paths))``, or None when it has neither. ``out_dir`` saves ``<run>_per_class_iou.png/.svg``."""
    pc = rec.per_class()
    if not pc:
        return None
    source, per_class, miou = pc
    return source, plot.plot_per_class_iou(per_class, out_dir, title=f"Per-class IoU ({source}) — {rec.describe()}",
                                           stem=f"{rec.name}_per_class_iou", miou=miou)


def confusion_figure(rec: RunRecord, out_dir: str | Path | None = None):
    """The run's row-normalised confusion matrix: ``(evaluation, (fig, DataFrame, paths))``, or None when it
    has no evaluation with a confusion CSV. ``out_dir`` saves ``<run>_confusion.png/.svg``."""
    cm = confusion(rec)
    if not cm:
        return None
    name, mat = cm
    return name, plot.plot_confusion(mat, out_dir, title=f"Confusion matrix ({name}, row-normalised) — "
                                                         f"{rec.describe()}", stem=f"{rec.name}_confusion")


def sample_predictions(checkpoint: str | Path, n: int = 3, *, device: str = "cpu", split: str = "val",
                       data_root: str | Path | None = None) -> tuple[list[dict], object]:
    """Predict the first ``n`` images of the split the checkpoint was trained on, as ``eseg eval`` does (its
    :class:`~eseg_cli.inference.Predictor`, the normalisation its checkpoint records, its validation resize,
    whole-image mode, labels at the ground truth's size). Returns ``(samples, dataset)``; a sample is
    ``{"name", "image", "gt", "pred"}`` (the image as read, uint8 HxWx3, at the ground truth's size)."""
    predictor = Predictor(checkpoint, device)
    cfg = predictor.checkpoint.get("config") or {}
    dataset = cfg.get("dataset") or "synthetic"
    root = data_root or cfg.get("data_root") or predictor.checkpoint.get("data_root")
    ds = eval_dataset(dataset, root, split, cfg.get("val_resize"))
    samples = []
    for i in range(min(n, len(ds))):
        img, mask = ds[i]
        pred = predictor.labels(predictor.to_tensor(img[None]), tuple(mask.shape))[0].cpu().numpy()
        samples.append({"name": Path(ds.files[i][0]).stem, "image": ds.load(i)[0],
                        "gt": mask.numpy().astype(np.uint8), "pred": pred.astype(np.uint8)})
    return samples, ds
