"""The training loop: one step-based loop for CPU, CUDA (DDP through torchrun) and torch-xla.

Read it top-down: :func:`train` opens the run folder (its layout: :mod:`eseg_cli.run`) and hands
over to a :class:`Trainer`, whose constructor sets up data, model, optimizer, schedule and precision;
:meth:`Trainer.train_step` is one optimisation step and the only place with XLA / DDP / grad-scaler
branches; :meth:`Trainer.fit` is the loop, with hooks for logging (one host sync per log interval),
checkpointing and validation, in that order (a failing validation never costs the step's checkpoint).
Progress goes to an ``on_event`` callback (:mod:`eseg_cli.events`); the library draws nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timm.layers import convert_sync_batchnorm
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from eseg_cli.data import build_dataset, build_transforms
from eseg_cli.data.check import check_batchable, check_dataset
from eseg_cli.engine import checkpoint as ckpt_io
from eseg_cli.engine import tensorboard
from eseg_cli.engine.config import TrainConfig, as_config, validate, with_new_keys
from eseg_cli.engine.distributed import Runtime, barrier, broadcast_object, cleanup, setup
from eseg_cli.engine.ema import WeightEma
from eseg_cli.engine.evaluator import evaluate_model
from eseg_cli.engine.initialize import encoder_start, init_from_checkpoint, init_model_kwargs, read_init_source
from eseg_cli.engine.losses import build_loss
from eseg_cli.engine.sampling import MixedDataset, MixedSampler, ResumableSampler, SeededDataset
from eseg_cli.engine.schedule import WarmupCosine
from eseg_cli.errors import EsegError, Interrupted
from eseg_cli.events import Emitter, OnEvent, tee
from eseg_cli.inference import runtime
from eseg_cli.inference.allocator import keep_freed_memory
from eseg_cli.inference.precision import amp_dtype, autocast, precision_note, resolve_amp
from eseg_cli.inference.prepare import compile_training
from eseg_cli.models import create_model
from eseg_cli.run import Run

RUNS_DIR = Path("runs")  # where a run without a folder of its own goes (relative to the working directory)
VAL_KEYS = ("mIoU", "pixAcc", "mAcc", "fwIoU")


class NonFiniteLoss(EsegError):
    """The loss became NaN or inf; the run stopped and kept its last good checkpoint."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch; with ``deterministic``, ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # ... but not its debugging aid that fills every new tensor with NaN (so that reading uninitialised
        # memory shows): it changes no result of a correct program and made training steps 10x slower on CPU
        # in channels_last (benchmarks/README.md)
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False


def build_train_data(cfg: TrainConfig, norm: tuple | None = None):
    """Train and val datasets for ``cfg`` through eseg_cli.data (the synthetic default is generated on first use).

    ``norm`` is the model's input normalisation ``(mean, std)`` (ImageNet's when None)."""
    mean_std = dict(zip(("mean", "std"), norm)) if norm else {}
    train_tf = build_transforms(True, crop_size=tuple(cfg.crop_size), scale_range=tuple(cfg.scale_range),
                                hflip=cfg.hflip, photometric=cfg.photometric, **mean_std)
    val_tf = build_transforms(False, resize=tuple(cfg.val_resize) if cfg.val_resize else None, **mean_std)
    train_ds = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split, transform=train_tf)
    root = str(train_ds.root)  # the synthetic default resolved by its dataset: saved, so eval finds the same set
    if cfg.extra_data:
        train_ds = _mix_sources(train_ds, cfg, train_tf)
    return train_ds, build_dataset(cfg.dataset, root, cfg.val_split, transform=val_tf), root


def _mix_sources(main, cfg: TrainConfig, train_tf):
    """The main training set and ``cfg.extra_data`` as one :class:`MixedDataset` (one shared transform)."""
    sources, names = [main], [f"{cfg.dataset}:{cfg.train_split}"]
    for i, src in enumerate(cfg.extra_data):
        ds = build_dataset(src["dataset"], src["root"], src["split"], transform=train_tf)
        _check_same_classes(ds, main, f"extra_data[{i}] {src['root']}")
        sources.append(ds)
        names.append(f"{src['dataset']}:{src['root']}")
    return MixedDataset(sources, names)


def _check_same_classes(ds, main, what: str) -> None:
    """A mixed source must label with the training set's classes in the same order: class ``k`` of one is
    class ``k`` of the other (the same count in another order would teach the wrong classes)."""
    if ds.num_classes != main.num_classes:
        raise EsegError(f"{what} has {ds.num_classes} classes but the training set has {main.num_classes}; a mixed "
                        "source must use the same class list")
    ours, theirs = [str(c).strip().lower() for c in main.classes], [str(c).strip().lower() for c in ds.classes]
    if ours != theirs:
        k = next(k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        how = "the same classes in another order" if sorted(ours) == sorted(theirs) else "other classes"
        raise EsegError(f"{what} lists {how}: class {k} is {ds.classes[k]!r} there but {main.classes[k]!r} in the "
                        "training set; write its classes.txt (and masks) in the training set's order")


def check_train_data(cfg: TrainConfig, rt: Runtime, train_ds, val_ds, say: Callable[[str], None],
                     on_event: OnEvent | None = None) -> None:
    """Find problems in the data before training starts, not at the first validation hours later.

    Always (headers only): ``num_classes`` agrees with the dataset; validation images can be batched with
    ``val_batch_size``. With ``check_data``: every image/label pair is read (readability, sizes, label values;
    see :mod:`eseg_cli.data.check`), by rank 0 only, its verdict shared with the other processes.
    """
    ds_classes = getattr(train_ds, "num_classes", None)
    if cfg.num_classes and ds_classes and cfg.num_classes != ds_classes:
        raise EsegError(f"config 'num_classes' is {cfg.num_classes} but the {cfg.dataset} dataset has {ds_classes} "
                        "classes; remove num_classes (it comes from the dataset) or fix the dataset's class list")
    if val_ds is not None and hasattr(val_ds, "files"):
        check_batchable(val_ds, cfg.val_batch_size)
    if not cfg.check_data:
        return
    problem = None
    if rt.is_main:
        try:
            t0, counts = time.perf_counter(), []
            # a mixed training set (extra_data) is checked source by source
            parts = [(d, "training") for d in getattr(train_ds, "sources", [train_ds])] + [(val_ds, "validation")]
            for ds, what in parts:
                if ds is not None and hasattr(ds, "files") and hasattr(ds, "load"):
                    counts.append(check_dataset(ds, what=what, on_event=on_event))
            if counts:
                n, cached = sum(c["pairs"] for c in counts), sum(c["cached"] for c in counts)
                say(f"Data check: {n} image/label pairs good ({cached} unchanged since the last check) in "
                    f"{time.perf_counter() - t0:.1f} s.")
        except EsegError as e:
            problem = str(e)
    problem = broadcast_object(rt, problem)
    if problem:
        raise EsegError(problem)


def preload_training_set(train_ds, max_mb: int, say: Callable[[str], None]) -> None:
    """Decode the training set into memory once (:meth:`SegmentationDataset.preload`) when it takes at most
    ``max_mb`` MB decoded: decoding PNGs was three quarters of the data pipeline's time (benchmarks/README.md).
    A mixed set's sources share the budget; a dataset without ``preload`` (a user's own) is read as it is."""
    sources = list(getattr(train_ds, "sources", [train_ds]))
    if max_mb <= 0 or not all(hasattr(ds, "preload") for ds in sources):
        return
    need = sum(ds.decoded_bytes() for ds in sources)
    if need > max_mb * 2 ** 20:
        say(f"Training set: {need / 2 ** 20:.0f} MB decoded, more than preload_mb {max_mb}; read from disk each "
            "step.")
        return
    t0 = time.perf_counter()
    held = sum(ds.preload() for ds in sources)
    say(f"Preloaded {sum(len(ds) for ds in sources)} training images ({held / 2 ** 20:.0f} MB decoded) in "
        f"{time.perf_counter() - t0:.1f} s.")


def build_train_model(cfg: TrainConfig, num_classes: int, weights=None, init: dict | None = None) -> nn.Module:
    """The model of ``cfg``; ``weights`` (from :func:`~eseg_cli.engine.initialize.encoder_start`) replace
    reading ``cfg.pretrained`` again; ``init`` (the ``init_from`` checkpoint) gives its architecture."""
    kw = init_model_kwargs(cfg, init) if init is not None else dict(cfg.model)
    if cfg.pretrained:
        kw["pretrained"] = weights or cfg.pretrained
    return create_model(cfg.scale, num_classes=num_classes, **kw)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; no weight decay on biases and norm weights (1-d parameters).

    With ``encoder_lr_mult`` != 1 or ``freeze_encoder_steps``, the encoder's parameters get groups of their
    own (lr * ``encoder_lr_mult``), marked ``"encoder": True`` for the scheduler."""
    split = (cfg.encoder_lr_mult != 1.0 or cfg.freeze_encoder_steps > 0) and hasattr(model, "encoder")
    enc_ids = {id(p) for p in model.encoder.parameters()} if split else set()
    groups = []
    for is_enc in ([False, True] if split else [False]):
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad and (id(p) in enc_ids) == is_enc:
                (no_decay if p.ndim <= 1 else decay).append(p)
        lr = cfg.lr * (cfg.encoder_lr_mult if is_enc else 1.0)
        groups += [{"params": decay, "weight_decay": cfg.weight_decay, "lr": lr, "encoder": is_enc},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr, "encoder": is_enc}]
    # one fused kernel per step over all parameters where torch has it (CPU, CUDA): the per-tensor loop took a
    # third of an ESeg-Lite-S step on 2 CPU cores (benchmarks/README.md); torch-xla keeps the default
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)


# ----------------------------------------------------------------------------- the entry point

def train(config: dict | TrainConfig, run_dir: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, steps: int | None = None, data_root: str | Path | None = None,
          model: nn.Module | None = None, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
          on_event: OnEvent | None = None, stop_after: int | None = None, handle_signals: bool = True,
          init: dict | None = None) -> dict:
    """Train a model as ``config`` says, writing the run folder ``run_dir``; return a summary dict.

    The summary holds ``best_mIoU``, ``best_step``, ``final_metrics`` (the last validation), ``run_dir``,
    ``checkpoint`` (best.pt, or last.pt when no validation ran), ``steps`` and ``seconds``.

    ``run_dir=None`` makes a new folder ``runs/<scale>-<dataset>-<time>`` (``-2``, ``-3`` ... when taken). A
    ``run_dir`` that already holds a run is refused unless ``overwrite``, which first moves the old run to
    ``<name>.old-<time>`` (logs of two runs are never mixed).

    ``resume=True`` continues the run in ``run_dir`` from ``checkpoints/last.pt`` exactly (model, optimizer,
    scheduler, grad scaler, EMA, step, sampler position, RNG) with its saved config; ``config`` is ignored.
    Two things may change on resume, and are recorded in ``config_history.jsonl``: ``steps`` (a new total;
    the cosine schedule is recomputed from the current step) and ``data_root`` (the data moved).

    ``model``, ``train_dataset`` and ``val_dataset`` replace those built from the config (Python API, tests).
    ``init`` is the checkpoint ``init_from`` names, when the caller has read it already (the CLI, for its scale).
    ``stop_after`` stops (with a checkpoint) after that many steps in total, as if the run were killed there.
    ``on_event`` receives progress :class:`~eseg_cli.events.Event` objects (task ``train``).
    With ``handle_signals`` (in the main thread), SIGINT / SIGTERM finish the current step, write a
    checkpoint and raise :class:`~eseg_cli.errors.Interrupted` (a second SIGINT stops at once).
    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; rank 0 writes the run folder.
    """
    state, changes = None, {}
    if resume:
        if run_dir is None:
            raise EsegError("resuming needs the run folder to continue")
        run = Run(run_dir)
        if not run.last_checkpoint.is_file():
            raise EsegError(f"cannot resume {run.path}: it has no checkpoints/last.pt; start a new run instead")
        state = runtime.load_checkpoint(run.last_checkpoint)
        cfg = validate(with_new_keys(state["config"]), where=f"config saved in {run.last_checkpoint}")
        cfg, changes = _resume_changes(cfg, int(state["step"]), steps, data_root)
        _check_config_file(run, cfg, given=changes)
    else:
        if steps is not None or data_root is not None:
            raise EsegError("'steps' and 'data_root' change a resumed run; for a new run put them in the config",
                            field=("steps", "data_root"))
        cfg = as_config(config)
        if cfg.data_root:
            cfg = dataclasses.replace(cfg, data_root=_absolute(cfg.data_root))

    if cfg.tensorboard:
        tensorboard.require()
    rt = setup(cfg.device)
    finished = False
    existed = run_dir is not None and Path(run_dir).exists()
    emit = Emitter(on_event if rt.is_main else None, "train", total=cfg.steps)
    try:
        with contextlib.ExitStack() as stack:
            run = _open_run(rt, stack, cfg, run_dir, resume, overwrite, emit)
            if cfg.tensorboard and rt.is_main:
                tb = stack.enter_context(tensorboard.TensorBoardWriter(
                    run.tensorboard_dir, purge_step=int(state["step"]) + 1 if state else None))
                emit = Emitter(tee(on_event, tb), "train", total=cfg.steps)
            if handle_signals:
                stack.enter_context(_StopOnSignal())
            try:
                trainer = Trainer(cfg, rt, run, emit, state=state, model=model, train_dataset=train_dataset,
                                  val_dataset=val_dataset, init=init)
            except BaseException:
                if rt.is_main and (run_dir is None or not existed):
                    run.remove_if_unused()  # a failed start leaves no empty folder behind (one it made)
                raise
            if rt.is_main:
                run.record("resume" if resume else "start", trainer.step, changes)
            try:
                summary = trainer.fit(cfg.steps if stop_after is None else min(cfg.steps, stop_after))
                finished = True
                return summary
            finally:
                del trainer  # DDP's reducer lets go of the process group before cleanup() destroys it
    finally:
        cleanup(rt, finished)


def _absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _resume_changes(cfg: TrainConfig, at: int, steps: int | None, data_root) -> tuple[TrainConfig, dict]:
    """The config of a resumed run with a new total of ``steps`` and/or ``data_root``, and ``{key: [old, new]}``."""
    changes = {}
    if steps is not None and steps != cfg.steps:
        if steps < at:
            raise EsegError(f"the run is already at step {at}; a new total of 'steps' {steps} would end before it",
                            field="steps")
        changes["steps"] = [cfg.steps, steps]
    if data_root is not None:
        new = _absolute(data_root)
        if not Path(new).is_dir():
            raise EsegError(f"'data_root' {new} is not a folder; give the folder the data moved to", field="data_root")
        if new != cfg.data_root:
            changes["data_root"] = [cfg.data_root, new]
    if changes:
        cfg = validate({**cfg.to_dict(), **{k: new for k, (_, new) in changes.items()}}, where="resumed config")
    return cfg, changes


def _check_config_file(run: Run, cfg: TrainConfig, given: dict) -> None:
    """A resumed run continues with its checkpoint's config: an edited ``config.yaml`` is refused with the
    difference, not silently written back over. The keys ``given`` (``--steps``, ``--data-root``: the changes a
    resume takes) are the user's explicit word and are not compared."""
    on_disk = run.load_config()
    if on_disk is None:
        return
    ours, edited = cfg.to_dict(), validate(with_new_keys(on_disk), where=str(run.config_path)).to_dict()
    diff = [k for k in ours if k not in given and ours[k] != edited.get(k)]
    if diff:
        shown = "; ".join(f"'{k}' {ours[k]!r} in the checkpoint, {edited.get(k)!r} in config.yaml" for k in diff)
        raise EsegError(f"{run.config_path} differs from the config of {run.last_checkpoint} ({shown}); a resume "
                        "continues with the checkpoint's config: undo the edit ('steps' and 'data_root' change those "
                        f"on resume), or start a new run from these weights ('init_from' {run.path})",
                        field=(*diff, "steps", "data_root", "init_from"))


def _open_run(rt: Runtime, stack: contextlib.ExitStack, cfg: TrainConfig, run_dir, resume: bool, overwrite: bool,
              emit: Emitter) -> Run:
    """Rank 0 makes (or takes over) the run folder, locks it and clears stale temporary files; every rank gets
    the same :class:`Run` (or the same error)."""
    outcome = None
    if rt.is_main:
        try:
            if run_dir is None:
                run = Run.create(RUNS_DIR, Run.default_name(cfg.scale, cfg.dataset))
            else:
                run = Run(run_dir)
                if run.path.exists() and not run.path.is_dir():
                    raise EsegError(f"run folder {run.path} is a file; choose another folder")
                if not resume and run.holds_run():
                    if not overwrite:
                        raise EsegError(f"run folder {run.path} already holds a run; resume it, choose another "
                                        "folder, or start over there (overwrite=True moves the old run aside)")
                    old = run.move_aside()
                    emit.message(f"Moved the previous run in {run.path} to {old}.")
            stack.enter_context(run.lock())
            stale = run.clean_stale_tmp()
            if stale:
                emit.message(f"Removed {len(stale)} temporary file(s) left by an interrupted write in {run.path}.")
            outcome = ("ok", str(run.path))
        except EsegError as e:
            outcome = ("error", str(e))
    kind, value = broadcast_object(rt, outcome)
    if kind == "error":
        raise EsegError(value)
    return Run(value)


class _StopOnSignal:
    """While active (main thread only), SIGINT / SIGTERM set :attr:`signum` instead of killing the process;
    a second SIGINT raises KeyboardInterrupt at once."""

    current: _StopOnSignal | None = None
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        _StopOnSignal.current = self
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        _StopOnSignal.current = None


def _requested_stop() -> int | None:
    return _StopOnSignal.current.signum if _StopOnSignal.current is not None else None


def _worker_ignores_signals(_worker_id: int) -> None:
    # Ctrl-C reaches every process of the terminal's group; the loader workers leave it to the main process,
    # which finishes its step and shuts them down. SIGTERM keeps its default: it is how multiprocessing ends
    # daemonic workers at exit (ignoring it left an interpreter joining a live worker forever).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """One training run: everything built once in ``__init__``, then :meth:`fit`."""

    def __init__(self, cfg: TrainConfig, rt: Runtime, run: Run, emit: Emitter, *, state: dict | None = None,
                 model: nn.Module | None = None, train_dataset: Dataset | None = None,
                 val_dataset: Dataset | None = None, init: dict | None = None):
        # amp auto is decided for this device here, and the run records the decision: a resume keeps its precision
        cfg = dataclasses.replace(cfg, amp=resolve_amp(cfg.amp, rt.device))
        self.cfg, self.rt, self.run, self.emit = cfg, rt, run, emit
        self.device = rt.device
        if self.device.type == "cpu":
            keep_freed_memory()  # exact; each step reuses the last step's memory (inference/allocator.py)
        seed_everything(cfg.seed, cfg.deterministic and not rt.xla)
        # pretrained encoder weights decide the input normalisation, so they are read before the data
        if state is not None or model is not None or not cfg.init_from:
            init = None  # a resumed run or a given model has its weights already
        elif init is None:
            init = read_init_source(cfg.init_from)
        weights, norm = encoder_start(cfg, model, state, init)
        self._setup_data(train_dataset, val_dataset, norm)
        self._setup_model(model, state, weights, init)
        self._setup_optimization()
        self.step, self.best, self.best_step, self.history = 0, -1.0, None, []
        if state is not None:
            self._restore(state)
        self._setup_loaders()
        # a run stopped between a checkpoint and that step's validation validates first on resume
        self.pending_validation = state is not None and self._is_validation_step(self.step) and not any(
            r["step"] == self.step for r in self.history)
        if rt.is_main:
            self.run.write_config(cfg.to_dict())
            if self.load_report is not None and state is None:
                self.run.write_pretrained_report(self.load_report.to_dict())
            if self.init_report is not None:
                self.run.write_init_report(self.init_report.to_dict(), self.init_report.table())
        self.compile_s: float | None = None  # seconds the first (compiling) step took, with cfg.compile
        self._losses: list[torch.Tensor] = []  # this log interval's losses, still on the device
        self._checked_step = -1  # the last step whose losses were checked finite

    # ------------------------------------------------------------------ setup
    def _setup_data(self, train_ds, val_ds, norm) -> None:
        cfg, rt = self.cfg, self.rt
        self.data_root = cfg.data_root
        if train_ds is None:
            # rank 0 generates the synthetic set first so the others find it complete
            if rt.is_main:
                train_ds, val_ds, self.data_root = build_train_data(cfg, norm)
                if cfg.dataset == "synthetic" and not cfg.data_root:
                    self.emit.message(f"No dataset given: training on the built-in synthetic set (Cityscapes "
                                      f"layout, 19 classes) in {self.data_root}.")
            barrier(rt)
            if not rt.is_main:
                train_ds, val_ds, self.data_root = build_train_data(cfg, norm)
        check_train_data(cfg, rt, train_ds, val_ds, self.emit.message, self.emit.on_event)
        self.num_classes = cfg.num_classes or getattr(train_ds, "num_classes", None)
        if self.num_classes is None:
            raise EsegError("num_classes is unknown: set it in the recipe or use a dataset that reports it")
        self.ignore_index = getattr(train_ds, "ignore_index", 255)
        self.class_names = list(getattr(train_ds, "classes", []) or []) or None
        if len(train_ds) < cfg.batch_size * rt.world_size:
            raise EsegError(f"the training set has {len(train_ds)} images, fewer than one batch "
                            f"({cfg.batch_size} x {rt.world_size} processes); lower batch_size")
        self.train_ds, self.val_ds = train_ds, val_ds
        preload_training_set(train_ds, cfg.preload_mb, self.emit.message)

    def _setup_model(self, model: nn.Module | None, state: dict | None, weights, init: dict | None) -> None:
        cfg, rt = self.cfg, self.rt
        torch.manual_seed(cfg.seed)  # identical initial weights in every process
        if model is None and state is not None and state.get("model_config"):
            # the recorded model (it knows what the pretrained / init_from weights decided: encoder variant,
            # normalisation, inherited architecture); no need for those files again
            saved = state["model_config"]
            clash = sorted(k for k, v in cfg.model.items() if k in saved and saved[k] != v)
            if clash:
                raise EsegError(f"{self.run.last_checkpoint}: its config says model {clash[0]}="
                                f"{cfg.model[clash[0]]!r} but its weights were built with {saved[clash[0]]!r}; the "
                                "checkpoint is inconsistent, start a new run")
            model = runtime.build_from_config(saved)
        elif model is None:
            model = build_train_model(cfg, self.num_classes, weights, init)
        self.model_config = dict(getattr(model, "config", {}) or {})
        self.load_report = getattr(model, "load_report", None)
        if self.load_report is not None and state is None:
            self.emit.message(self.load_report.table())
        self.init_report = init_from_checkpoint(model, init, cfg.init_from) if init is not None else None
        if self.init_report is not None:
            self.emit.message(self.init_report.table())
        if state is not None:
            runtime.load_weights(model, state["model"], f"checkpoint {self.run.last_checkpoint}")
        if rt.distributed and self.device.type == "cuda":
            model = convert_sync_batchnorm(model)  # timm's keeps its fused BN+activation layers intact
            if rt.is_main:
                n = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
                self.emit.message(f"SyncBatchNorm: {n} layers, statistics over {rt.world_size} process(es) "
                                  f"({rt.backend})")
        elif rt.distributed and rt.is_main and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                   for m in model.modules()):
            self.emit.message("Note: SyncBatchNorm needs CUDA; on CPU each process keeps plain BatchNorm over "
                              "its own batch.")
        model.to(self.device)
        if cfg.channels_last and not rt.xla:
            model.to(memory_format=torch.channels_last)
        self.model = self.net = model
        if rt.distributed and not rt.xla:
            self.net = DistributedDataParallel(model, device_ids=[self.device.index]
                                               if self.device.type == "cuda" else None)

    def _setup_optimization(self) -> None:
        """Optimizer, schedule, precision (autocast dtype, grad scaler), EMA and loss."""
        cfg, dev = self.cfg, self.device
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = WarmupCosine(self.optimizer, cfg.steps, cfg.warmup_steps, cfg.warmup_factor,
                                      cfg.min_lr_ratio, frozen_steps=[cfg.freeze_encoder_steps if g["encoder"] else 0
                                                                      for g in self.optimizer.param_groups])
        amp_dtype(cfg.amp, dev)  # refuses fp16 off CUDA before any step
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16" and dev.type == "cuda")
        self.ema = None
        if cfg.ema_decay:
            self.ema = WeightEma(self.model, cfg.ema_decay)
        self.criterion = build_loss(cfg.loss, ohem_thresh=cfg.ohem_thresh, ohem_min_kept=cfg.ohem_min_kept,
                                    ignore_index=self.ignore_index)
        self.forward_loss = self._forward_loss
        if cfg.compile:
            # forward and loss as one graph (AOTAutograd derives the backward); the optimizer step stays eager
            # (fused already). The first step compiles: fit() reports how long it took.
            self.forward_loss = compile_training(self._forward_loss)

    def _restore(self, state: dict) -> None:
        """Continue from ``state`` (a ``last.pt``): optimizer, schedule, scaler, EMA, RNG, step and best so far."""
        cfg, rt = self.cfg, self.rt
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.set_total_steps(cfg.steps)  # a resume may extend the schedule
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.step = int(state["step"])
        ckpt_io.set_rng_state(state["rng"])
        # last.pt is written before its step's validation, so the validations on file are the record of the best
        history = self.run.truncate_logs(self.step) if rt.is_main else None
        self.history = broadcast_object(rt, history)
        if self.history:
            top = max(self.history, key=lambda r: r["mIoU"])
            self.best, self.best_step = float(top["mIoU"]), int(top["step"])
        else:
            self.best, self.best_step = float(state.get("best_mIoU", -1.0)), state.get("best_step")
        self.emit.message(f"Resuming {self.run.path} at step {self.step}/{cfg.steps}.", self.step)

    def _setup_loaders(self) -> None:
        cfg, rt = self.cfg, self.rt
        self.seeded = SeededDataset(self.train_ds, cfg.seed)
        if isinstance(self.train_ds, MixedDataset):  # extra sources at their sampling ratios
            ratios = [1 - sum(x["ratio"] for x in cfg.extra_data)] + [x["ratio"] for x in cfg.extra_data]
            self.sampler = MixedSampler(self.seeded, ratios, num_replicas=rt.world_size, rank=rt.rank, seed=cfg.seed,
                                        batch_size=cfg.batch_size)
            self.emit.message("Training sources: " + ", ".join(
                f"{n} ({len(d)} images, {r:.0%} of samples)"
                for n, d, r in zip(self.train_ds.names, self.train_ds.sources, ratios)))
        else:
            self.sampler = ResumableSampler(self.seeded, num_replicas=rt.world_size, rank=rt.rank, shuffle=True,
                                            seed=cfg.seed, batch_size=cfg.batch_size)
        self.per_epoch = self.sampler.batches_per_epoch
        if self.per_epoch < 1:
            raise EsegError(f"batch_size {cfg.batch_size} is larger than each process's share of the training set")
        self.val_loader = None
        if self.val_ds is not None and len(self.val_ds) > 0:
            vds = self.val_ds
            if cfg.max_val_images:
                vds = Subset(vds, range(min(cfg.max_val_images, len(vds))))
            if rt.distributed and not rt.xla:
                # a strided share per rank, without DistributedSampler's padding (which would count images twice)
                vds = Subset(vds, range(rt.rank, len(vds), rt.world_size))
            self.val_loader = DataLoader(vds, batch_size=cfg.val_batch_size, shuffle=False, num_workers=cfg.workers,
                                         worker_init_fn=_worker_ignores_signals,
                                         generator=torch.Generator().manual_seed(cfg.seed))

    def batches(self, step: int):
        """Training batches from ``step`` on, epoch after epoch (the sampler starts mid-epoch on resume)."""
        cfg = self.cfg
        epoch, first = divmod(step, self.per_epoch)
        while True:
            self.seeded.epoch = epoch
            self.sampler.set_position(epoch, first)
            yield from DataLoader(self.seeded, batch_size=cfg.batch_size, sampler=self.sampler,
                                  num_workers=cfg.workers, drop_last=True, pin_memory=self.device.type == "cuda",
                                  worker_init_fn=_worker_ignores_signals,
                                  generator=torch.Generator().manual_seed(cfg.seed + epoch))  # global RNG untouched
            epoch, first = epoch + 1, 0

    # ------------------------------------------------------------------ one step
    def train_step(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One optimisation step on one batch; returns the loss, still on the device (no host sync).

        DDP all-reduces the gradients during ``backward``; on XLA they are all-reduced explicitly before
        clipping, so that every core clips the same global gradient; the fp16 grad scaler is unscaled before
        clipping.
        """
        cfg, rt = self.cfg, self.rt
        loss = self.forward_loss(*self.to_device(image, target))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if rt.xla:
            import torch_xla
            import torch_xla.core.xla_model as xm

            xm.reduce_gradients(self.optimizer)  # reduce, then clip, then step
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()
        else:
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if rt.xla:
            torch_xla.sync()
        return loss.detach()

    def to_device(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the run's device, the image in the run's memory format."""
        image = image.to(self.device, non_blocking=True)
        if self.cfg.channels_last and not self.rt.xla:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, target.to(self.device, non_blocking=True)

    def _forward_loss(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The network under the run's autocast, then the loss in float32: what ``compile`` compiles."""
        with autocast(self.device, self.cfg.amp):
            logits = self.net(image)
        return self.criterion(logits.float(), target)

    # ------------------------------------------------------------------ hooks
    def _is_validation_step(self, step: int) -> bool:
        return self.val_loader is not None and (step % self.cfg.eval_interval == 0 or step == self.cfg.steps)

    def _interval_losses(self, step: int) -> list[float]:
        """The losses since the last log, fetched in one host sync; raises if one is not finite."""
        if not self._losses:
            return []
        values = torch.stack(self._losses).float().cpu().tolist()
        first = step - len(values) + 1
        for i, v in enumerate(values):
            if not np.isfinite(v):
                raise NonFiniteLoss(_nan_message(v, first + i, self.run.last_checkpoint))
        self._checked_step = step
        return values

    def log(self, step: int, t_log: float, images: int, t0: float) -> None:
        """Hook: one row in log.jsonl and a ``log`` event (mean loss over the interval, lr, images/s, memory)."""
        values = self._interval_losses(step)
        self._losses.clear()
        now = time.perf_counter()
        row = {"step": step, "loss": round(sum(values) / max(len(values), 1), 6),
               "lr": self.scheduler.get_last_lr()[0], "images_per_s": round(images / max(now - t_log, 1e-9), 3),
               "memory_mb": round(_memory_mb(self.device), 1), "elapsed_s": round(now - t0, 2)}
        if self.rt.is_main:
            self.run.append_log(row)
        self.emit("log", step, metrics=row)

    def save_checkpoint(self, step: int) -> None:
        """Hook: ``last.pt`` (never with weights from a non-finite step)."""
        if self._checked_step != step:
            self._interval_losses(step)
        if self.rt.is_main:
            ckpt_io.save_checkpoint(self._state(step), self.run.last_checkpoint)
        barrier(self.rt)

    def validate(self, step: int) -> dict:
        """Hook: validation metrics, a row in val.jsonl and ``best.pt`` when the mIoU improved."""
        if self._checked_step != step:
            self._interval_losses(step)
        eval_model = self.ema.module if self.ema is not None else self.model
        cm = evaluate_model(eval_model, self.val_loader, self.num_classes, self.device,
                            ignore_index=self.ignore_index, class_names=self.class_names, amp=self.cfg.amp)
        m = cm.compute()
        row = {"step": step, **{k: m[k] for k in VAL_KEYS}, "time": time.time()}
        self.history.append(row)
        if m["mIoU"] > self.best:
            self.best, self.best_step = m["mIoU"], step
            if self.rt.is_main:  # best.pt before the row: a run killed in between validates again on resume
                ckpt_io.save_checkpoint(self._state(step), self.run.best_checkpoint)
        if self.rt.is_main:
            self.run.append_val(row)
            self.run.write_val_latest(m)
        self.best = broadcast_object(self.rt, self.best)
        self.emit("val", step, metrics={**row, "best_mIoU": self.best, "best_step": self.best_step})
        return m

    def _state(self, step: int) -> dict:
        return _to_cpu({
            "model": self.model.state_dict(), "model_config": self.model_config, "config": self.cfg.to_dict(),
            "step": step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": ckpt_io.rng_state(), "sampler": {"epoch": step // self.per_epoch, "batch": step % self.per_epoch},
            "best_mIoU": self.best, "best_step": self.best_step, "classes": self.class_names,
            "num_classes": self.num_classes, "data_root": self.data_root,
        })

    def _agreed_stop(self, step: int) -> int | None:
        """The signal that asks this run to stop after ``step``, agreed by all processes.

        One process stops at once; several agree at log steps (one small all-reduce per log interval).
        """
        signum = _requested_stop()
        if not self.rt.distributed:
            return signum
        if step % self.cfg.log_interval != 0:
            return None
        if self.rt.xla:
            import torch_xla.core.xla_model as xm

            agreed = xm.mesh_reduce("eseg_stop", signum or 0, max)
        else:
            flag = torch.tensor([signum or 0], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            agreed = int(flag.item())
        return agreed or None

    # ------------------------------------------------------------------ the loop
    def fit(self, end: int) -> dict:
        """Train from the current step to ``end``; write and return the summary."""
        cfg, rt = self.cfg, self.rt
        self.emit("start", self.step)
        note = precision_note(cfg.amp, self.device)
        if note:
            self.emit.message(note, self.step)
        last_metrics = self.history[-1] if self.history else None
        if self.pending_validation:  # its checkpoint was written, then the run stopped before validating
            last_metrics = self.validate(self.step)
        t0 = t_log = time.perf_counter()
        images, stopped_by = 0, None
        batches = self.batches(self.step)
        self.net.train()
        while self.step < end:
            image, target = next(batches)
            if cfg.compile and self.compile_s is None:
                t_compile = time.perf_counter()
                self._losses.append(self.train_step(image, target))
                self.compile_s = round(time.perf_counter() - t_compile, 1)
                self.emit.message(f"Compiled the training step in {self.compile_s:.0f} s (the first step; it pays "
                                  "back over the run).", self.step + 1)
            else:
                self._losses.append(self.train_step(image, target))
            images += image.shape[0] * rt.world_size
            self.step += 1
            step, is_last = self.step, self.step == end
            stopped_by = self._agreed_stop(step)
            if step % cfg.log_interval == 0 or is_last or stopped_by:
                self.log(step, t_log, images, t0)
                images, t_log = 0, time.perf_counter()
            else:
                self.emit("advance", step)
            if step % cfg.checkpoint_interval == 0 or is_last or stopped_by:
                self.save_checkpoint(step)  # before validation: an error there keeps this step
            if stopped_by:
                break
            if self._is_validation_step(step):
                last_metrics = self.validate(step)
        summary = self._summary(time.perf_counter() - t0, last_metrics, stopped_by)
        self.emit("end", self.step)
        if stopped_by:
            name = signal.Signals(stopped_by).name
            raise Interrupted(f"stopped by {name} after step {self.step}; checkpoint {self.run.last_checkpoint}",
                              stopped_by, resume=f"resume the run folder {self.run.path}", summary=summary)
        return summary

    def _summary(self, seconds: float, last_metrics: dict | None, stopped_by: int | None) -> dict:
        best_path, last_path = self.run.best_checkpoint, self.run.last_checkpoint
        summary = {
            "run_dir": str(self.run.path), "steps": self.step, "total_steps": self.cfg.steps,
            "finished": self.step >= self.cfg.steps, "seconds": round(seconds, 2),
            "best_mIoU": self.best if self.best >= 0 else None, "best_step": self.best_step,
            "final_metrics": last_metrics, "history": self.history,
            "checkpoint": str(best_path if best_path.is_file() else last_path), "last_checkpoint": str(last_path),
            "compile_s": self.compile_s,
        }
        if stopped_by:
            summary["stopped_by"] = signal.Signals(stopped_by).name
        if self.rt.is_main:
            self.run.write_summary(summary)
        return summary


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2 ** 20


def _nan_message(value: float, step: int, last_path: Path) -> str:
    kept = f"the last good checkpoint is {last_path}" if last_path.is_file() else "no checkpoint was written yet"
    return (f"the loss became {value} at step {step}; stopping ({kept}). Lower lr, add clip_grad, "
            "or turn off amp, then --resume or start again")
