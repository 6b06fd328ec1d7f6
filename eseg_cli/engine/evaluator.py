"""The eval loop: data -> predictions -> :class:`ConfusionMatrix` -> result files.

:func:`evaluate` (``eseg eval``) runs a checkpoint's :class:`~eseg_cli.inference.Predictor` (its inference mode,
its recorded normalisation) over a dataset split read as uint8 pixels, and writes ``eval_<mode>.json`` and the
confusion CSV (and, asked, the predictions through :func:`eseg_cli.inference.files.write_prediction`);
:func:`evaluate_onnx` (``eseg eval --onnx``) does the same for an exported ONNX file through onnxruntime
(:func:`score_dataset` is the part they share).
:func:`evaluate_model` is the same loop for training's validation, whose batches are normalised already: the
model goes through the same inference modes and fast path (:mod:`eseg_cli.inference.modes`). Scoring saved
prediction PNGs is :mod:`eseg_cli.engine.scoring`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from eseg_cli.data import build_dataset, build_transforms
from eseg_cli.data.check import check_batchable
from eseg_cli.engine.metrics import ConfusionMatrix
from eseg_cli.errors import EsegError
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.inference import modes
from eseg_cli.inference.export import OnnxPredictor
from eseg_cli.inference.files import output_paths, plan_outputs, write_prediction
from eseg_cli.inference.predictor import Predictor
from eseg_cli.run import Run
from eseg_cli.utils import atomic_write_json, atomic_write_text, check_output_apart

#: ``predict(images, size) -> (B, H, W)`` class ids at the labels' ``size``
PredictFn = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def _xla_sync(device: torch.device) -> None:
    if device.type == "xla":
        import torch_xla  # optional (TPU hosts): imported only where its device is in use

        torch_xla.sync()


@torch.no_grad()
def confusion(predict: PredictFn, loader, num_classes: int, device: torch.device, *, ignore_index: int = 255,
              class_names: list[str] | None = None, max_images: int | None = None,
              on_prediction: Callable[[int, torch.Tensor], None] | None = None) -> ConfusionMatrix:
    """The loop: ``predict`` each batch of ``loader`` at its labels' size, into a confusion matrix (summed over
    processes). ``on_prediction(index, pred)`` gets each image's CPU label map (to save it, to count progress)."""
    cm = ConfusionMatrix(num_classes, ignore_index, device=device, class_names=class_names)
    seen = 0
    for image, target in loader:
        if max_images is not None and seen >= max_images:
            break
        target = target.to(device, non_blocking=True)
        pred = predict(image, tuple(target.shape[-2:])).long()
        cm.update(pred, target)
        if on_prediction is not None:
            for j in range(pred.shape[0]):
                on_prediction(seen + j, pred[j].cpu())
        seen += image.shape[0]
        _xla_sync(device)
    cm.all_reduce()
    return cm


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, num_classes: int, device: torch.device, *, ignore_index: int = 255,
                   class_names: list[str] | None = None, max_images: int | None = None,
                   on_prediction=None, **mode_kw) -> ConfusionMatrix:
    """:func:`confusion` of ``model`` over a ``loader`` of normalised batches (training's validation), in the
    inference mode of ``mode_kw`` (:func:`eseg_cli.inference.modes.labels`: ``mode``, ``crop``, ``stride``,
    ``scales``, ``flip``, ``amp``)."""
    was_training = model.training
    model.eval()
    channels_last = bool((getattr(model, "prepared", None) or {}).get("channels_last"))

    def predict(image, size):
        image = image.to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return modes.labels(model, image, num_classes, size, out_dtype=torch.int64, **mode_kw)

    try:
        return confusion(predict, loader, num_classes, device, ignore_index=ignore_index, class_names=class_names,
                         max_images=max_images, on_prediction=on_prediction)
    finally:
        model.train(was_training)


def write_results(metrics: dict, cm: ConfusionMatrix, out_dir: str | Path, mode: str | None = None) -> dict:
    """Write ``eval_<mode>.json`` and ``eval_<mode>_confusion.csv`` (``eval.json`` ... without a mode) into
    ``out_dir`` (atomically); return their paths."""
    paths = {k: str(v) for k, v in Run(out_dir).eval_paths(mode).items()}
    atomic_write_json(paths["json"], metrics)
    atomic_write_text(paths["confusion_csv"], cm.to_csv())
    return paths


def eval_dataset(dataset: str, data_root: str | Path | None, split: str, resize=None):
    """A dataset split as evaluation reads it: uint8 ``(3, H, W)`` images (resized to ``resize`` when given; the
    model's normalisation is the Predictor's) and labels at their own size."""
    tf = build_transforms(False, resize=tuple(resize) if resize else None, normalize=False)
    return build_dataset(dataset, data_root, split, transform=tf)


def _prediction_writer(ds, out_dir: Path, palette) -> Callable[[int, torch.Tensor], None]:
    """``<stem>.png`` (class ids) and ``<stem>_color.png`` per image into ``out_dir``, checked first: the folder
    apart from the dataset, and no two images writing one file."""
    check_output_apart(out_dir, [ds.root] if getattr(ds, "root", None) else [], [], field="save_predictions")
    images = [(Path(ip), Path(ip).stem) for ip, _ in ds.files]
    plan_outputs(images, [], out_dir, overlay=False, overwrite=True, field="save_predictions")
    colors = palette

    def write(i: int, pred: torch.Tensor) -> None:
        write_prediction(output_paths(images[i][1], out_dir, overlay=False, confidence=False), pred.numpy(), colors)

    return write


def evaluate(checkpoint: str | Path, *, dataset: str | None = None, data_root: str | Path | None = None,
             split: str = "val", mode: str = "whole", crop: tuple[int, int] | None = None,
             stride: tuple[int, int] | None = None, scales: tuple[float, ...] = modes.DEFAULT_SCALES,
             flip: bool = True, batch_size: int = 1, workers: int = 2, device: str = "auto",
             amp: str | None = None, out_dir: str | Path | None = None, save_predictions: str | Path | None = None,
             max_images: int | None = None, resize=None, use_ema: bool = True,
             on_event: OnEvent | None = None) -> dict:
    """Evaluate a checkpoint (a file or a run folder); return the metrics dict and write ``eval_<mode>.json`` +
    ``eval_<mode>_confusion.csv`` to ``out_dir``.

    ``dataset``/``data_root`` default to those the checkpoint was trained on. ``out_dir`` defaults to the run
    folder holding the checkpoint. ``on_event`` gets progress events (task ``eval``, one step per image).
    """
    predictor = Predictor(checkpoint, device, mode=mode, crop=crop, stride=stride, scales=scales, flip=flip,
                          amp=amp, use_ema=use_ema)
    cfg = predictor.checkpoint.get("config") or {}  # slide without a crop: the Predictor took the run's own
    dataset = dataset or cfg.get("dataset") or "synthetic"
    if data_root is None and dataset == cfg.get("dataset"):
        # the resolved root (for the synthetic default: the exact generated version the model was trained on)
        data_root = cfg.get("data_root") or predictor.checkpoint.get("data_root")
    metrics, cm = score_dataset(predictor, dataset, data_root, split,
                                resize if resize is not None else cfg.get("val_resize"), batch_size=batch_size,
                                workers=workers, save_predictions=save_predictions, max_images=max_images,
                                on_event=on_event)
    metrics.update({"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "mode": mode,
                    "step": predictor.checkpoint.get("step")})
    out_dir = Run.of(checkpoint).path if out_dir is None else out_dir
    metrics["files"] = write_results(metrics, cm, out_dir, mode)
    metrics["confusion_matrix"] = cm.mat.cpu().tolist()
    return metrics


def evaluate_onnx(path: str | Path, *, dataset: str | None = None, data_root: str | Path | None = None,
                  split: str = "val", mode: str = "whole", crop: tuple[int, int] | None = None,
                  stride: tuple[int, int] | None = None, scales: tuple[float, ...] = modes.DEFAULT_SCALES,
                  flip: bool = True, batch_size: int = 1, workers: int = 2, threads: int | None = None,
                  out_dir: str | Path | None = None, save_predictions: str | Path | None = None,
                  max_images: int | None = None, on_event: OnEvent | None = None) -> dict:
    """:func:`evaluate` for an exported ONNX file (any: float32, int8), run by onnxruntime in the same modes
    and scored by the same loop.

    ``dataset``/``data_root`` and ``val_resize`` default to those the file's metadata records (the run it was
    exported from); a file that records no dataset needs ``dataset``. ``out_dir`` defaults to ``<file stem>_eval``
    beside the file (the run folder's own ``eval_<mode>.json`` is the checkpoint's). The result adds ``onnx``,
    ``quantized_ops`` (quantised operators in the graph, by type) and ``onnx_metadata`` (entries that
    ``eseg export`` did not write, e.g. an int8 quantiser's).
    """
    path = Path(path)
    if mode == "slide" and crop is None:  # a checkpoint gives its training crop (the Predictor); a file does not
        raise EsegError("slide mode needs a crop size ('crop', HxW) for an ONNX file (it does not record the run's "
                        "training crop)", field="crop")
    modes.check_inference(mode, crop, stride, scales)
    predictor = OnnxPredictor(path, threads, mode=mode, crop=crop, stride=stride, scales=scales, flip=flip)
    meta = predictor.metadata
    recorded = "dataset" in predictor.session.get_modelmeta().custom_metadata_map
    if dataset is None and not meta["dataset"]:
        raise EsegError(f"{path} records no dataset (exported by an older eseg, or from a bare model): give "
                        "'dataset' (and 'data_root')", field=("dataset", "data_root"))
    dataset = dataset or meta["dataset"]
    if data_root is None and dataset == meta["dataset"]:
        data_root = meta["data_root"]
    metrics, cm = score_dataset(predictor, dataset, data_root, split, meta["val_resize"], batch_size=batch_size,
                                workers=workers, save_predictions=save_predictions, max_images=max_images,
                                on_event=on_event)
    metrics.update({"onnx": str(path), "dataset": dataset, "split": split, "mode": mode,
                    "val_resize": meta["val_resize"], "metadata_records_dataset": recorded,
                    "quantized_ops": predictor.quantized_ops, "onnx_metadata": predictor.extra_metadata})
    out_dir = path.parent / f"{path.stem}_eval" if out_dir is None else out_dir
    metrics["files"] = write_results(metrics, cm, out_dir, mode)
    metrics["confusion_matrix"] = cm.mat.cpu().tolist()
    return metrics


def score_dataset(predictor, dataset: str, data_root, split: str, resize, *, batch_size: int = 1, workers: int = 2,
                  save_predictions: str | Path | None = None, max_images: int | None = None,
                  on_event: OnEvent | None = None) -> tuple[dict, ConfusionMatrix]:
    """The evaluation of any predictor (:class:`Predictor`, the ONNX one) over a dataset split read as uint8
    pixels: ``(metrics, confusion matrix)``, the metrics with the number of ``images`` scored."""
    ds = eval_dataset(dataset, data_root, split, resize)
    num_classes = predictor.num_classes or ds.num_classes
    if num_classes != ds.num_classes:
        raise EsegError(f"the model predicts {num_classes} classes but {dataset} has {ds.num_classes}; "
                        "pick the dataset the model was trained on")
    check_batchable(ds, batch_size, "evaluation", "use a batch size of 1, or resize to one size")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    save = _prediction_writer(ds, Path(save_predictions), getattr(ds, "palette", None) or predictor.palette) \
        if save_predictions else None
    n = len(ds) if max_images is None else min(len(ds), max_images)
    emit = Emitter(on_event, "eval", total=n)

    def on_prediction(i, pred):
        if save is not None:
            save(i, pred)
        emit("advance", i + 1)

    emit("start", 0)
    cm = confusion(lambda images, size: predictor.labels(predictor.to_tensor(images), size), loader, num_classes,
                   predictor.device, ignore_index=getattr(ds, "ignore_index", 255),
                   class_names=list(getattr(ds, "classes", [])) or None, max_images=max_images,
                   on_prediction=on_prediction)
    emit("end", n)
    metrics = cm.compute()
    metrics["images"] = n
    return metrics, cm
