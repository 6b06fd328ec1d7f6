"""Ablations as data: named grids of model cells, each measured (params, FLOPs) and optionally trained.

``run_ablation("decoder", out_dir)`` is Table 8's grid; ``levels`` and ``fusion`` vary ESeg's BiFPN
level range and fusion modes. Every finished cell is one row in ``<out_dir>/results.jsonl``; trained, it is one
row per (cell, seed): each seed changes the initialisation, the data order and the augmentation, and the cells of
one ablation share their seeds, so that :mod:`eseg_cli.analysis.stats` can pair them. Rerunning skips the (cell,
seed) pairs whose row (same settings) is already there, and a cell killed mid-training resumes from its run
folder's last checkpoint, so an interrupted ablation continues where it stopped.

Params/FLOPs measurements are cached in ``measurements.json`` of :func:`eseg_cli.utils.cache_dir`
(``$ESEG_CACHE_DIR`` or ``~/.cache/eseg``), keyed by model configuration and resolution, so that ``eseg report``
is quick.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import fvcore
import timm
import torch

from eseg_cli import engine
from eseg_cli.analysis.paper import load
from eseg_cli.analysis.profiler import count_flops, count_params
from eseg_cli.analysis.stats import row_seed
from eseg_cli.errors import EsegError, Interrupted
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.models import SCALES, create_model, model_name
from eseg_cli.models.deeplab import ASPP_RATES
from eseg_cli.models.layers import check_norm
from eseg_cli.run import Run
from eseg_cli.utils import atomic_write_json, atomic_write_text, cache_dir

RESULTS_FILE = "results.jsonl"


@dataclass(frozen=True)
class Cell:
    """One model of an ablation grid: a registry name and its keyword arguments."""

    name: str  # unique within the ablation, e.g. "b1-deeplab-os16"
    label: str  # human-readable, e.g. "EfficientNet-B1 + DeepLabV3+ (w/ atrous)"
    model: str
    kwargs: dict = field(default_factory=dict)


def decoder_cells(scale: str = "eseg-s") -> list[Cell]:
    """Table 8: encoders {EfficientNet-B1, ResNet-50} x decoders {BiFPN, DeepLabV3+ OS16, DeepLabV3+ OS32}.

    The BiFPN rows are ESeg-S (96 channels, 4 repeats) on each encoder. Table 8 is defined on ESeg-S; another
    ``scale`` makes its encoder stand in for EfficientNet-B1 under both decoders (ESeg-S's BiFPN and the same
    DeepLabV3+), for an ablation of the decoders that trains faster. The cells keep the names of the B1 rows
    they stand for, their labels name the encoder, and the ResNet-50 rows are left out.
    """
    if scale != "eseg-s":
        enc = SCALES[scale]
        eseg_s = SCALES["eseg-s"]
        bifpn = {"channels": eseg_s.channels, "repeats": eseg_s.repeats, "act": "silu"}  # ESeg-S's decoder
        label = f"{enc.display_name} encoder (for B1)"
        return [Cell("b1-bifpn", f"{label} + BiFPN (w/o atrous)", enc.name, bifpn),
                Cell("b1-deeplab-os16", f"{label} + DeepLabV3+ (w/ atrous)", "deeplabv3plus",
                     {"encoder": enc.name, "output_stride": 16}),
                Cell("b1-deeplab-os32", f"{label} + DeepLabV3+ (w/o atrous)", "deeplabv3plus",
                     {"encoder": enc.name, "output_stride": 32})]
    cells = []
    for enc, enc_label, eseg_kw in (("b1", "EfficientNet-B1", {}), ("r50", "ResNet-50", {"encoder": "resnet50"})):
        timm_name = "efficientnet_b1" if enc == "b1" else "resnet50"
        cells.append(Cell(f"{enc}-bifpn", f"{enc_label} + BiFPN (w/o atrous)", "eseg-s", dict(eseg_kw)))
        cells.append(Cell(f"{enc}-deeplab-os16", f"{enc_label} + DeepLabV3+ (w/ atrous)", "deeplabv3plus",
                          {"encoder": timm_name, "output_stride": 16}))
        cells.append(Cell(f"{enc}-deeplab-os32", f"{enc_label} + DeepLabV3+ (w/o atrous)", "deeplabv3plus",
                          {"encoder": timm_name, "output_stride": 32}))
    return cells


def levels_cells(scale: str = "eseg-s") -> list[Cell]:
    """BiFPN level ranges P3-P7 (EfficientDet's), P2-P7, P3-P9 and P2-P9 (ESeg's) on one ESeg scale."""
    return [Cell(f"p{lo}-p{hi}", f"P{lo}-P{hi}", scale, {"min_level": lo, "max_level": hi})
            for lo, hi in ((3, 7), (2, 7), (3, 9), (2, 9))]


def fusion_cells(scale: str = "eseg-s") -> list[Cell]:
    """BiFPN node fusion (fast normalized, softmax, sum) and the head's level fusion (softmax vs sum)."""
    return [
        Cell("fastattn", "BiFPN fast normalized + head softmax", scale,
             {"fusion": "fastattn", "head_fusion": "softmax"}),
        Cell("softmax", "BiFPN softmax + head softmax", scale, {"fusion": "softmax", "head_fusion": "softmax"}),
        Cell("sum", "BiFPN sum + head softmax", scale, {"fusion": "sum", "head_fusion": "softmax"}),
        Cell("head-sum", "BiFPN fast normalized + head sum", scale, {"fusion": "fastattn", "head_fusion": "sum"}),
    ]


ABLATIONS: dict[str, Callable[[str], list[Cell]]] = {
    "decoder": decoder_cells, "levels": levels_cells, "fusion": fusion_cells,
}


def cells_for(kind: str, scale: str = "eseg-s") -> list[Cell]:
    """The cells of ablation ``kind`` (``decoder``, ``levels`` or ``fusion``)."""
    if kind not in ABLATIONS:
        raise EsegError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}")

    name = model_name(scale, field="scale")  # "s", "S" -> "eseg-s": one name per model in the rows
    if name not in SCALES:
        raise EsegError(f"'scale' must be an ESeg scale ({', '.join(SCALES)}), got {scale!r}", field="scale")
    return ABLATIONS[kind](name)


# ----------------------------------------------------------------------------- measurement cache

def cache_path() -> Path:
    """The measurement cache: ``measurements.json`` in :func:`eseg_cli.utils.cache_dir`."""
    return cache_dir() / "measurements.json"


def _cache_key(model: str, kwargs: dict, num_classes: int, resolution: tuple[int, int]) -> str:
    # versions are part of the key: a new tracer or timm can change the counts
    return json.dumps([model, kwargs, num_classes, list(resolution), torch.__version__.split("+")[0],
                       timm.__version__, getattr(fvcore, "__version__", "")], sort_keys=True, default=str)


def _load_cache() -> dict:
    path = cache_path()
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache is only a cache: measure again


def cached_measurement(model: str, kwargs: dict | None = None, *, resolution: tuple[int, int] = (1024, 2048),
                       num_classes: int = 19) -> dict | None:
    """The cached result of :func:`measure` for these settings, or None when it was never measured."""
    return _load_cache().get(_cache_key(model, dict(kwargs or {}), num_classes, resolution))


def measure(model: str, kwargs: dict | None = None, *, resolution: tuple[int, int] = (1024, 2048),
            num_classes: int = 19, use_cache: bool = True) -> dict:
    """Params and FLOPs (fvcore total and conv-only multiply-adds) of the registered model ``model``, cached on disk."""
    kwargs = dict(kwargs or {})
    key = _cache_key(model, kwargs, num_classes, resolution)
    cache = _load_cache() if use_cache else {}
    if key in cache:
        return dict(cache[key], cached=True)
    try:
        net = create_model(model, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise EsegError(f"model {model!r} does not accept these options {kwargs}: {e}") from None
    res = dict(count_params(net))
    fl = count_flops(net, resolution)
    res.update(flops=fl["flops"], flops_conv=fl["flops_conv"], skipped_ops=sorted(fl["skipped_ops"]))
    if use_cache:
        cache = _load_cache()  # re-read: another process may have added entries meanwhile
        cache[key] = res
        try:
            atomic_write_json(cache_path(), cache)
        except OSError:
            pass  # an unwritable cache folder costs time, not correctness
    return dict(res, cached=False)


# ----------------------------------------------------------------------------- results file

#: the numbers of a results row that statistics and tables read: a non-finite one is refused, not averaged
MEASURED_FIELDS = ("final_miou", "prev_miou", "miou", "params", "flops", "flops_conv", "seconds")


def read_results(path: str | Path) -> list[dict]:
    """Rows of a ``results.jsonl`` (or of every ``results.jsonl`` under a folder)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob(RESULTS_FILE)) if path.is_dir() else []
    if not files:
        raise EsegError(f"{path} is neither a {RESULTS_FILE} file nor a folder containing one; "
                        "give the output folder of an ablation")
    rows = []
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise EsegError(f"{f} line {i} is not valid JSON; fix or delete that line and rerun") from None
            if not isinstance(row, dict):
                raise EsegError(f"{f} line {i} is not a results row (a JSON object); delete that line and rerun")
            for key in MEASURED_FIELDS:
                v = row.get(key)
                if isinstance(v, float) and not math.isfinite(v):
                    raise EsegError(f"{f} line {i}: {key} is {v}, not a measurement; delete that line and rerun "
                                    "the ablation to measure that cell again")
            rows.append(row)
    return rows


def _append_row(path: Path, row: dict) -> None:
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(row, default=str) + "\n")


def _signature(cell: Cell, resolution, num_classes, train_settings: dict | None) -> str:
    blob = json.dumps([cell.model, cell.kwargs, list(resolution), num_classes, train_settings],
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _pct(measured: float | None, paper: float | None) -> float | None:
    if measured is None or paper is None or paper != paper or paper == 0:  # paper != paper: NaN
        return None
    return round(100.0 * (measured - paper) / paper, 2)


def _paper_values(kind: str) -> dict[str, dict]:
    if kind != "decoder":
        return {}  # the paper's level/fusion ablation numbers are not part of the stored reference data

    return {r["cell"]: {"flops_b": float(r["flops_b"]), "miou": float(r["miou"])}
            for r in load("table8").to_dict("records")}


# ----------------------------------------------------------------------------- training

def train_cell(cell: Cell, run_dir: Path, *, base_scale: str, steps: int, dataset: str, data_root: str | None,
               recipe: str | None, overrides: dict | None = None, seed: int | None = None,
               on_event: OnEvent | None = None) -> dict:
    """Train one cell with the engine under the ablation's shared settings; return its eval metrics: the final
    checkpoint's validation (``miou``), the validation before it (``prev_miou``, ``prev_step``) and the best one.

    The configuration is resolved once for ``base_scale`` (the recipe and its per-scale block), then only
    the model changes, so every cell of an ablation trains under identical settings. A run folder left
    by an interrupted ablation is resumed from its last checkpoint, a finished one is reused.
    """
    run = Run(run_dir)
    summary = run.read_summary()
    if summary and not (summary.get("finished") and summary.get("total_steps") == steps):
        summary = None
    if summary is None:
        ov = {**(overrides or {}), "steps": steps, "data_root": data_root, "scale": cell.model,
              "model": {**(overrides or {}).get("model", {}), **cell.kwargs}}
        if seed is not None:
            ov["seed"] = seed
        config = engine.load_config(dataset, base_scale, ov, recipe=recipe)
        resume = run.last_checkpoint.is_file()
        # a folder left before its first checkpoint has nothing to resume: it is moved aside, not mixed in
        summary = engine.train(config, run.path, resume=resume, overwrite=not resume, on_event=on_event)
    final = summary.get("final_metrics") or {}
    history = summary.get("history") or []
    last = history[-1] if history else {}
    prev = history[-2] if len(history) > 1 else {}
    if final and last.get("step") != steps:
        final = {}  # the last validation was not at the final step: no final checkpoint's number to record
    return {"miou": final.get("mIoU"), "final_step": last.get("step") if final else None,
            "prev_miou": prev.get("mIoU"), "prev_step": prev.get("step"), "best_miou": summary.get("best_mIoU"),
            "pixacc": final.get("pixAcc"), "run_dir": str(summary.get("run_dir", run.path)),
            "checkpoint": summary.get("checkpoint")}


# ----------------------------------------------------------------------------- the ablation

def _resolve_seeds(seeds: list[int] | None, overrides: dict, recipe_seed: int) -> list[int]:
    """The seeds to train (given ones, deduplicated in order); none given: the one of ``--set seed=N`` or the
    recipe's. The seed is popped from ``overrides``: it is a row's own key, not part of the shared settings."""
    if seeds:
        if "seed" in overrides:
            raise EsegError("give the 'seeds' once: as seeds, not also as the override seed=...", field="seeds")
        if any(int(x) < 0 for x in seeds):
            raise EsegError(f"seeds must be >= 0, got {list(seeds)}", field="seed")
        return list(dict.fromkeys(int(x) for x in seeds))
    return [int(overrides.pop("seed"))] if "seed" in overrides else [recipe_seed]


def _done_key(row: dict) -> tuple:
    return (row.get("ablation"), row.get("cell"), row.get("signature"), row_seed(row) if row.get("train") else None)


def scaled_aspp_rates(output_stride: int, scale: float) -> list[int]:
    """DeepLabV3+'s ASPP rates at ``output_stride`` multiplied by ``scale`` (at least 1): rates scaled to the feature
    size, as DeepLabv3 itself doubles them when the output stride halves."""
    if not scale > 0:
        raise EsegError(f"'aspp_scale' must be > 0, got {scale}", field="aspp_scale")
    return [max(1, round(r * scale)) for r in ASPP_RATES[output_stride]]


def run_ablation(kind: str, out_dir: str | Path, *, scale: str = "eseg-s", resolution: tuple[int, int] = (1024, 2048),
                 num_classes: int = 19, model_kwargs: dict | None = None, cells: list[str] | None = None,
                 train: bool = False, steps: int | None = None, dataset: str = "synthetic",
                 data_root: str | None = None, recipe: str | None = None, train_overrides: dict | None = None,
                 use_cache: bool = True, seeds: list[int] | None = None, protocol: str | None = None,
                 aspp_scale: float | None = None, decoder_norm: str | None = None,
                 on_event: OnEvent | None = None) -> list[dict]:
    """Run ablation ``kind`` into ``out_dir``; return one row per cell (per cell and seed when trained), finished
    earlier or now.

    ``model_kwargs`` are added to every cell's model options (tiny models for tests). ``cells`` picks a
    subset by name. ``steps`` defaults to the recipe's. ``seeds`` (with ``train``): every cell trains once per
    seed, seed by seed (all cells of the first seed, then the next), so a stopped ablation leaves complete
    pairs; default: the recipe's seed. ``protocol`` names the protocol whose recipe (``recipe``) this run
    follows; each row records it with the recipe's steps, so a report can tell a protocol run from one cut
    short (see :func:`eseg_cli.analysis.stats.is_smoke`). ``aspp_scale`` multiplies the ASPP rates of the
    DeepLabV3+ cells (see :func:`scaled_aspp_rates`). ``decoder_norm`` (``group``) gives every cell's decoder
    and head GroupNorm instead of batch norm. ``on_event`` gets progress events: task ``ablate``
    (one ``advance`` per (cell, seed), its ``item`` the cell name and seed, ``message`` "skipped" or
    "done", ``metrics`` its row) and the ``train`` events of each cell's training.
    """
    all_cells = cells_for(kind, scale)
    if cells:
        unknown = sorted(set(cells) - {c.name for c in all_cells})
        if unknown:
            raise EsegError(f"unknown cell(s) {', '.join(unknown)} for ablation {kind!r}; "
                            f"choose from {', '.join(c.name for c in all_cells)}")
        all_cells = [c for c in all_cells if c.name in cells]
    if seeds and not train:
        raise EsegError("'seeds' only apply to trained cells: set 'train'", field=("seeds", "train"))
    if protocol and not (train and recipe):
        raise EsegError("a 'protocol' is a recipe: give it with 'train' and its 'recipe'", field="protocol")
    overrides = dict(train_overrides or {})
    seed_list: list[int | None] = [None]
    if train:
        base_cfg = engine.load_config(dataset, scale, {}, recipe=recipe)  # the recipe's own seed and schedule
        steps = base_cfg.steps if steps is None else steps
        if steps < 1:
            raise EsegError(f"'steps' must be >= 1, got {steps}", field="steps")
        seed_list = _resolve_seeds(seeds, overrides, base_cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    done = {_done_key(r): r for r in (read_results(results_path) if results_path.is_file() else [])}
    scale = model_name(scale, field="scale")
    if decoder_norm is not None:
        check_norm(decoder_norm)
    if aspp_scale is not None:
        if kind != "decoder":
            raise EsegError("'aspp_scale' applies to the DeepLabV3+ cells of the decoder ablation", field="aspp_scale")
        scaled_aspp_rates(16, aspp_scale)  # checks the factor before any cell runs
    # a stand-in encoder's cells are not Table 8's: no paper FLOPs beside them
    paper = _paper_values(kind) if kind != "decoder" or scale == "eseg-s" else {}
    train_settings = ({"steps": steps, "dataset": dataset, "data_root": data_root, "recipe": recipe,
                       "overrides": overrides or None} if train else None)
    if train and protocol:
        train_settings.update(protocol=protocol, protocol_steps=base_cfg.steps)
    common = dict(model_kwargs or {})
    # what makes cells of one name another comparison: the scale (its encoder, for the decoder), ASPP rates, norm
    options = {"scale": scale, "aspp_scale": aspp_scale, "decoder_norm": decoder_norm}
    rows = []
    total = len(all_cells) * len(seed_list)
    emit = Emitter(on_event, "ablate", total=total)
    emit("start", 0)
    i = 0
    for seed in seed_list:
        for base in all_cells:
            i += 1
            extra = dict(common)
            if aspp_scale is not None and base.model == "deeplabv3plus":
                extra["aspp_rates"] = scaled_aspp_rates(base.kwargs["output_stride"], aspp_scale)
            if decoder_norm is not None:
                extra["decoder_norm"] = check_norm(decoder_norm)
            cell = Cell(base.name, base.label, base.model, {**base.kwargs, **extra})
            sig = _signature(cell, resolution, num_classes, train_settings)
            item = cell.name if seed is None else f"{cell.name} seed {seed}"
            if (kind, cell.name, sig, seed) in done:
                row = done[(kind, cell.name, sig, seed)]
                emit("advance", i, item=item, message=f"skipped (already in {results_path})", metrics=row)
                rows.append(row)
                continue
            emit.message(f"{item}: measuring{' and training' if train else ''}")
            t0 = time.time()
            row = _measured_row(kind, cell, paper.get(cell.name, {}), resolution, num_classes, use_cache)
            row.update(train=train_settings, run_dir=None, signature=sig, common_kwargs=common or None,
                       options=options)
            if train:
                row["seed"] = seed
                try:
                    metrics = train_cell(cell, out_dir / "runs" / f"{cell.name}-s{seed}-{sig}", base_scale=scale,
                                         steps=steps, dataset=dataset, data_root=data_root, recipe=recipe,
                                         overrides=overrides, seed=seed, on_event=on_event)
                except Interrupted as e:
                    e.resume = "run the same ablation again (finished cells and seeds are skipped, this one resumes)"
                    raise
                # the mIoU after the last step (what Table 8 reports), the validation before it (is the ranking
                # stable?); the best validation is kept beside them but never reported (a selection bias)
                row.update(miou=metrics["miou"], final_miou=metrics["miou"], final_step=metrics["final_step"],
                           prev_miou=metrics["prev_miou"], prev_step=metrics["prev_step"],
                           best_miou=metrics["best_miou"], pixacc=metrics["pixacc"], run_dir=metrics["run_dir"])
                if dataset == "cityscapes" and metrics["miou"] is not None and row["paper_miou"] is not None:
                    row["miou_diff"] = round(metrics["miou"] - row["paper_miou"], 2)
            row["seconds"] = round(time.time() - t0, 1)
            row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            _append_row(results_path, row)
            emit("advance", i, item=item, message="done", metrics=row)
            rows.append(row)
    emit("end", total)
    return rows


def _measured_row(kind: str, cell: Cell, ref: dict, resolution: tuple[int, int], num_classes: int,
                  use_cache: bool) -> dict:
    """A cell's row before training: its params and FLOPs beside the paper's (at 1024x2048 only)."""
    m = measure(cell.model, cell.kwargs, resolution=resolution, num_classes=num_classes, use_cache=use_cache)
    full_res = tuple(resolution) == (1024, 2048)  # the paper's FLOPs are at 1024x2048 only
    paper_flops = ref["flops_b"] * 1e9 if ref and full_res else None
    return {
        "ablation": kind, "cell": cell.name, "label": cell.label, "model": cell.model,
        "model_kwargs": cell.kwargs, "resolution": f"{resolution[0]}x{resolution[1]}",
        "num_classes": num_classes, "params": m["params"], "params_with_bn_stats": m["params_with_bn_stats"],
        "flops": m["flops"], "flops_conv": m["flops_conv"], "paper_flops": paper_flops,
        "flops_diff_pct": _pct(m["flops"], paper_flops) if paper_flops else None,
        "flops_conv_diff_pct": _pct(m["flops_conv"], paper_flops) if paper_flops else None,
        "paper_miou": ref.get("miou"), "miou": None, "pixacc": None, "miou_diff": None,
    }
