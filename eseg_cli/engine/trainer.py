"""The training loop: one step-based loop for CPU, CUDA (DDP through torchrun) and torch-xla.

Run folder layout::

    RUN_DIR/config.yaml          the resolved config
    RUN_DIR/log.jsonl            one row every log_interval steps (loss, lr, images/s, memory)
    RUN_DIR/val.jsonl            one row per validation (mIoU, pixAcc, mAcc, fwIoU)
    RUN_DIR/checkpoints/last.pt  written every checkpoint_interval steps and at the end
    RUN_DIR/checkpoints/best.pt  the checkpoint with the best validation mIoU
    RUN_DIR/summary.json         what train() returns
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eseg_cli.engine import checkpoint as ckpt_io
from eseg_cli.engine.config import TrainConfig, as_config, validate
from eseg_cli.engine.distributed import Runtime, barrier, broadcast_object, cleanup, setup
from eseg_cli.engine.evaluator import evaluate_model
from eseg_cli.engine.initialize import encoder_start, init_from_checkpoint, init_model_kwargs, read_init_source
from eseg_cli.engine.losses import build_loss
from eseg_cli.engine.sampling import MixedDataset, MixedSampler, ResumableSampler, SeededDataset
from eseg_cli.engine.schedule import WarmupCosine
from eseg_cli.errors import EsegError
from eseg_cli.utils import atomic_write_json, atomic_write_text


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
        torch.backends.cudnn.benchmark = False


def build_train_data(cfg: TrainConfig, norm: tuple | None = None):
    """Train and val datasets for ``cfg`` through eseg_cli.data (the synthetic default is generated on first use).

    ``norm`` is the model's input normalisation ``(mean, std)`` (ImageNet's when None)."""
    from eseg_cli.data import build_dataset, build_transforms

    root = cfg.data_root
    if cfg.dataset == "synthetic" and not root:
        from eseg_cli.data import synthetic

        root = str(synthetic.ensure_default())
    if not root:
        raise EsegError(f"--data-root is required for dataset {cfg.dataset!r}")
    mean_std = dict(zip(("mean", "std"), norm)) if norm else {}
    train_tf = build_transforms(True, crop_size=tuple(cfg.crop_size), scale_range=tuple(cfg.scale_range),
                                hflip=cfg.hflip, photometric=cfg.photometric, **mean_std)
    val_tf = build_transforms(False, resize=tuple(cfg.val_resize) if cfg.val_resize else None, **mean_std)
    train_ds = build_dataset(cfg.dataset, root, cfg.train_split, transform=train_tf)
    if cfg.extra_data:
        train_ds = _mix_sources(train_ds, cfg, train_tf)
    return train_ds, build_dataset(cfg.dataset, root, cfg.val_split, transform=val_tf), root


def _mix_sources(main, cfg: TrainConfig, train_tf):
    """The main training set and ``cfg.extra_data`` as one :class:`MixedDataset` (one shared transform)."""
    from eseg_cli.data import build_dataset

    sources, names = [main], [f"{cfg.dataset}:{cfg.train_split}"]
    for i, src in enumerate(cfg.extra_data):
        ds = build_dataset(src["dataset"], src["root"], src["split"], transform=train_tf)
        if ds.num_classes != main.num_classes:
            raise EsegError(f"extra_data[{i}] {src['root']} has {ds.num_classes} classes but the training set has "
                            f"{main.num_classes}; a mixed source must use the same class list")
        sources.append(ds)
        names.append(f"{src['dataset']}:{src['root']}")
    return MixedDataset(sources, names)


def check_train_data(cfg: TrainConfig, rt: Runtime, train_ds, val_ds, say: Callable[[str], None]) -> None:
    """Find problems in the data before training starts, not at the first validation hours later.

    Always (headers only): ``num_classes`` agrees with the dataset; validation images can be batched with
    ``val_batch_size``. With ``check_data``: every image/label pair is read (readability, sizes, label values;
    see :mod:`eseg_cli.data.check`), by rank 0 only, its verdict shared with the other processes.
    """
    from eseg_cli.data.check import check_batchable, check_dataset

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
                    counts.append(check_dataset(ds, what=what))
            if counts:
                n, cached = sum(c["pairs"] for c in counts), sum(c["cached"] for c in counts)
                say(f"Data check: {n} image/label pairs good ({cached} unchanged since the last check) in "
                    f"{time.perf_counter() - t0:.1f} s.")
        except EsegError as e:
            problem = str(e)
    problem = broadcast_object(rt, problem)
    if problem:
        raise EsegError(problem)


def build_train_model(cfg: TrainConfig, num_classes: int, weights=None, init: dict | None = None) -> nn.Module:
    """The model of ``cfg``; ``weights`` (from :func:`~eseg_cli.engine.initialize.encoder_start`) replace
    reading ``cfg.pretrained`` again; ``init`` (the ``init_from`` checkpoint) gives its architecture."""
    from eseg_cli.models import build_model

    kw = init_model_kwargs(cfg, init) if init is not None else dict(cfg.model)
    if cfg.pretrained:
        kw["pretrained"] = weights or cfg.pretrained
    return build_model(cfg.scale, num_classes=num_classes, **kw)


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
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


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


class _Progress:
    """A rich progress bar with loss, lr and ETA (main process only; silent when disabled)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[extra]}"),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=False)
        self.p.start()
        self.task = self.p.add_task("train", total=total, completed=start, loss="-", lr="-", extra="")

    def update(self, step: int, **fields) -> None:
        if self.enabled:
            self.p.update(self.task, completed=step, **fields)

    def print(self, msg: str) -> None:
        if self.enabled:
            self.p.console.print(msg, highlight=False)

    def stop(self) -> None:
        if self.enabled:
            self.p.stop()


def train(config: dict | TrainConfig, run_dir: str | Path, *, resume: bool = False, model: nn.Module | None = None,
          train_dataset: Dataset | None = None, val_dataset: Dataset | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None, stop_after: int | None = None) -> dict:
    """Train a model as ``config`` says, writing the run folder ``run_dir``; return a summary dict.

    The summary holds ``best_mIoU``, ``best_step``, ``final_metrics`` (the last validation), ``run_dir``,
    ``checkpoint`` (best.pt, or last.pt when no validation ran), ``steps`` and ``seconds``.

    ``resume=True`` continues the run in ``run_dir`` from ``checkpoints/last.pt`` exactly (model, optimizer,
    scheduler, grad scaler, EMA, step, sampler position, RNG); its saved config is used. ``model``,
    ``train_dataset`` and ``val_dataset`` replace those built from the config (Python API and tests).
    ``stop_after`` stops (with a checkpoint) after that many steps in total, as if the run were killed there.
    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; rank 0 writes the run folder.
    """
    run_dir = Path(run_dir)
    last_path = run_dir / "checkpoints" / "last.pt"
    state = None
    if resume:
        if not last_path.is_file():
            raise EsegError(f"--resume {run_dir}: no checkpoints/last.pt there; start a new run instead")
        state = ckpt_io.load_checkpoint(last_path)
        cfg = validate(state["config"], where=f"config saved in {last_path}")
    else:
        cfg = as_config(config)

    rt = setup(cfg.device)
    try:
        return _train(cfg, rt, run_dir, state, model, train_dataset, val_dataset, progress, log, stop_after)
    finally:
        cleanup(rt)


def _train(cfg: TrainConfig, rt: Runtime, run_dir: Path, state: dict | None, model, train_ds, val_ds,
           progress: bool, log, stop_after) -> dict:
    last_path = run_dir / "checkpoints" / "last.pt"
    say = (log or (lambda m: print(m, file=sys.stderr))) if rt.is_main else (lambda m: None)
    seed_everything(cfg.seed, cfg.deterministic and not rt.xla)
    dev = rt.device

    # pretrained encoder weights decide the input normalisation, so they are read before the data
    init = read_init_source(cfg.init_from) if cfg.init_from and state is None and model is None else None
    weights, norm = encoder_start(cfg, model, state, init)

    # data
    data_root = cfg.data_root
    if train_ds is None:
        # rank 0 generates the synthetic set first so the others find it complete
        if rt.is_main:
            train_ds, val_ds, data_root = build_train_data(cfg, norm)
            if cfg.dataset == "synthetic" and not cfg.data_root:
                say(f"No --dataset given: training on the built-in synthetic set (Cityscapes layout, 19 classes) "
                    f"in {data_root}.")
        barrier(rt)
        if not rt.is_main:
            train_ds, val_ds, data_root = build_train_data(cfg, norm)
    check_train_data(cfg, rt, train_ds, val_ds, say)
    num_classes = cfg.num_classes or getattr(train_ds, "num_classes", None)
    if num_classes is None:
        raise EsegError("num_classes is unknown: set it in the recipe or use a dataset that reports it")
    ignore_index = getattr(train_ds, "ignore_index", 255)
    class_names = list(getattr(train_ds, "classes", []) or []) or None
    if len(train_ds) < cfg.batch_size * rt.world_size:
        raise EsegError(f"the training set has {len(train_ds)} images, fewer than one batch "
                        f"({cfg.batch_size} x {rt.world_size} processes); lower batch_size")

    # model
    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    if model is None and state is not None and state.get("model_config"):
        # the recorded model (it knows what the pretrained / init_from weights decided: encoder variant,
        # normalisation, inherited architecture); no need for those files again
        saved = state["model_config"]
        clash = sorted(k for k, v in cfg.model.items() if k in saved and saved[k] != v)
        if clash:
            raise EsegError(f"{run_dir / 'checkpoints' / 'last.pt'}: its config says model {clash[0]}="
                            f"{cfg.model[clash[0]]!r} but its weights were built with {saved[clash[0]]!r}; the "
                            "checkpoint is inconsistent, start a new run")
        model = ckpt_io.build_from_config(saved)
    elif model is None:
        model = build_train_model(cfg, num_classes, weights, init)
    model_config = dict(getattr(model, "config", {}) or {})
    load_report = getattr(model, "load_report", None)
    if load_report is not None and state is None:
        say(load_report.table())
    init_report = init_from_checkpoint(model, init, cfg.init_from) if init is not None else None
    if init_report is not None:
        say(init_report.table())
    if state is not None:
        ckpt_io.load_weights(model, state["model"], f"checkpoint {last_path}")
    if rt.distributed and dev.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)  # timm's keeps its fused BN+activation layers intact
    elif rt.distributed and rt.is_main and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        say("Note: SyncBatchNorm needs CUDA; on CPU each process keeps plain BatchNorm over its own batch.")
    model.to(dev)
    if cfg.channels_last and not rt.xla:
        model.to(memory_format=torch.channels_last)
    net = model
    if rt.distributed and not rt.xla:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    optimizer = build_optimizer(cfg, model)
    scheduler = WarmupCosine(optimizer, cfg.steps, cfg.warmup_steps, cfg.warmup_factor, cfg.min_lr_ratio,
                             frozen_steps=[cfg.freeze_encoder_steps if g["encoder"] else 0
                                           for g in optimizer.param_groups])
    use_scaler = cfg.amp == "fp16" and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "")
    if amp_dtype is torch.float16 and dev.type != "cuda":
        raise EsegError("amp fp16 needs CUDA; use amp: bf16 on CPU and XLA")
    ema = None
    if cfg.ema_decay:
        from eseg_cli.engine.ema import WeightEma

        ema = WeightEma(model, cfg.ema_decay)
    criterion = build_loss(cfg.loss, ohem_thresh=cfg.ohem_thresh, ohem_min_kept=cfg.ohem_min_kept,
                           ignore_index=ignore_index)

    start_step, best, best_step, history = 0, -1.0, None, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        start_step = int(state["step"])
        best = float(state.get("best_mIoU", -1.0))
        best_step = state.get("best_step")
        ckpt_io.set_rng_state(state["rng"])
        if rt.is_main:
            history = _truncate_jsonl(run_dir / "val.jsonl", start_step)
            _truncate_jsonl(run_dir / "log.jsonl", start_step)
        say(f"Resuming {run_dir} at step {start_step}/{cfg.steps}.")

    # loaders
    seeded = SeededDataset(train_ds, cfg.seed)
    if isinstance(train_ds, MixedDataset):  # extra sources at their sampling ratios
        ratios = [1 - sum(x["ratio"] for x in cfg.extra_data)] + [x["ratio"] for x in cfg.extra_data]
        sampler = MixedSampler(seeded, ratios, num_replicas=rt.world_size, rank=rt.rank, seed=cfg.seed,
                               batch_size=cfg.batch_size)
        say("Training sources: " + ", ".join(f"{n} ({len(d)} images, {r:.0%} of samples)"
                                             for n, d, r in zip(train_ds.names, train_ds.sources, ratios)))
    else:
        sampler = ResumableSampler(seeded, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=cfg.seed,
                                   batch_size=cfg.batch_size)
    per_epoch = sampler.batches_per_epoch
    if per_epoch < 1:
        raise EsegError(f"batch_size {cfg.batch_size} is larger than each process's share of the training set")
    val_loader = None
    if val_ds is not None and len(val_ds) > 0:
        from torch.utils.data import Subset

        vds = val_ds
        if cfg.max_val_images:
            vds = Subset(val_ds, range(min(cfg.max_val_images, len(val_ds))))
        if rt.distributed and not rt.xla:
            # a strided share per rank, without DistributedSampler's padding (which would count images twice)
            vds = Subset(vds, range(rt.rank, len(vds), rt.world_size))
        val_loader = DataLoader(vds, batch_size=cfg.val_batch_size, shuffle=False, num_workers=cfg.workers,
                                generator=torch.Generator().manual_seed(cfg.seed))

    def batches(step: int):
        epoch, first = divmod(step, per_epoch)
        while True:
            seeded.epoch = epoch
            sampler.set_position(epoch, first)
            loader = DataLoader(seeded, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                                drop_last=True, pin_memory=dev.type == "cuda", persistent_workers=False,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch))  # keeps global RNG untouched
            yield from loader
            epoch, first = epoch + 1, 0

    # run folder
    if rt.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        saved = cfg.to_dict()
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
        if load_report is not None and state is None:
            atomic_write_json(run_dir / "pretrained.json", load_report.to_dict())
        if init_report is not None:
            atomic_write_json(run_dir / "init_from.json", init_report.to_dict())
            atomic_write_text(run_dir / "init_from.txt", init_report.table() + "\n")
    log_f = open(run_dir / "log.jsonl", "a") if rt.is_main else None
    val_f = open(run_dir / "val.jsonl", "a") if rt.is_main else None

    if rt.xla:
        import torch_xla
        import torch_xla.core.xla_model as xm

    def make_state(step: int) -> dict:
        return _to_cpu({
            "model": model.state_dict(), "model_config": model_config, "config": cfg.to_dict(), "step": step,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else {},
            "ema": ema.module.state_dict() if ema is not None else None,
            "rng": ckpt_io.rng_state(), "sampler": {"epoch": step // per_epoch, "batch": step % per_epoch},
            "best_mIoU": best, "best_step": best_step, "classes": class_names, "num_classes": num_classes,
            "data_root": data_root,
        })

    def validate_now(step: int) -> dict | None:
        nonlocal best, best_step
        if val_loader is None:
            return None
        eval_model = ema.module if ema is not None else model
        cm = evaluate_model(eval_model, val_loader, num_classes, dev, ignore_index=ignore_index,
                            class_names=class_names, amp=cfg.amp)
        m = cm.compute()
        row = {"step": step, **{k: m[k] for k in ("mIoU", "pixAcc", "mAcc", "fwIoU")}, "time": time.time()}
        history.append(row)
        if rt.is_main:
            val_f.write(json.dumps(row) + "\n")
            val_f.flush()
            if m["mIoU"] > best:
                best, best_step = m["mIoU"], step
                ckpt_io.save_checkpoint(make_state(step), run_dir / "checkpoints" / "best.pt")
            atomic_write_json(run_dir / "val_latest.json", m)
        best = broadcast_object(rt, best)
        return m

    bar = _Progress(progress and rt.is_main, cfg.steps, start_step)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    net.train()
    t0 = t_log = time.perf_counter()
    images_since = 0
    loss_sum = torch.zeros((), device=dev)
    n_sum = 0
    last_metrics = None
    step = start_step
    it = batches(start_step)
    try:
        while step < end:
            image, target = next(it)
            image = image.to(dev, non_blocking=True)
            target = target.to(dev, non_blocking=True)
            if cfg.channels_last and not rt.xla:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(image)
            loss = criterion(logits.float(), target)
            if not rt.xla and not torch.isfinite(loss):  # one sync per step; XLA checks at log time instead
                raise NonFiniteLoss(_nan_message(loss.item(), step + 1, last_path))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            if rt.xla:
                xm.optimizer_step(optimizer)
            else:
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            if rt.xla:
                torch_xla.sync()
            loss_sum += loss.detach()
            n_sum += 1
            images_since += image.shape[0] * rt.world_size
            step += 1

            is_last = step == end
            if step % cfg.log_interval == 0 or is_last:
                mean_loss = (loss_sum / n_sum).item()  # the one host sync per log interval
                if not math.isfinite(mean_loss):
                    raise NonFiniteLoss(_nan_message(mean_loss, step, last_path))
                now = time.perf_counter()
                row = {"step": step, "loss": round(mean_loss, 6), "lr": scheduler.get_last_lr()[0],
                       "images_per_s": round(images_since / max(now - t_log, 1e-9), 3),
                       "memory_mb": round(_memory_mb(dev), 1), "elapsed_s": round(now - t0, 2)}
                if rt.is_main:
                    log_f.write(json.dumps(row) + "\n")
                    log_f.flush()
                bar.update(step, loss=f"{mean_loss:.4f}", lr=f"{row['lr']:.2e}",
                           extra=f"{row['images_per_s']:.1f} img/s")
                loss_sum.zero_()
                n_sum, images_since, t_log = 0, 0, now
            else:
                bar.update(step)
            if step % cfg.eval_interval == 0 or step == cfg.steps:
                last_metrics = validate_now(step)
                if last_metrics is not None:
                    bar.print(f"step {step}: val mIoU {last_metrics['mIoU']:.2f}  pixAcc {last_metrics['pixAcc']:.2f}"
                              f"  (best {best:.2f} at step {best_step})")
            if step % cfg.checkpoint_interval == 0 or is_last:
                if rt.is_main:
                    ckpt_io.save_checkpoint(make_state(step), last_path)
                barrier(rt)
    finally:
        bar.stop()
        if log_f:
            log_f.close()
            val_f.close()

    seconds = time.perf_counter() - t0
    best_path = run_dir / "checkpoints" / "best.pt"
    summary = {
        "run_dir": str(run_dir), "steps": step, "total_steps": cfg.steps, "finished": step >= cfg.steps,
        "seconds": round(seconds, 2), "best_mIoU": best if best >= 0 else None, "best_step": best_step,
        "final_metrics": last_metrics, "history": history,
        "checkpoint": str(best_path if best_path.is_file() else last_path), "last_checkpoint": str(last_path),
    }
    if rt.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _truncate_jsonl(path: Path, step: int) -> list[dict]:
    """Drop rows written after ``step`` (a run killed between a log row and its checkpoint); return the rest."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if r.get("step", 0) <= step]
    if len(keep) != len(rows):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return keep


def _nan_message(value: float, step: int, last_path: Path) -> str:
    kept = f"the last good checkpoint is {last_path}" if last_path.is_file() else "no checkpoint was written yet"
    return (f"the loss became {value} at step {step}; stopping ({kept}). Lower lr, add clip_grad, "
            "or turn off amp, then --resume or start again")
