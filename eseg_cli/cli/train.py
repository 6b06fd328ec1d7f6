"""``eseg train``: train an ESeg model from a recipe (with flag overrides) into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eseg_cli.cli._app import app
from eseg_cli.cli._common import (
    THREADS_HELP,
    TRAIN_AMPS,
    complete_device,
    complete_model,
    confirm_overwrite,
    err_console,
    parse_sets,
    print_json,
    value,
)
from eseg_cli.cli._common import (
    default_from_recipe as _r,
)


@app.command("train", rich_help_panel="Train and evaluate")
def train_cmd(
    scale: Optional[str] = typer.Option(None, "--scale", "-s", metavar="NAME", autocompletion=complete_model,
                                        help="ESeg scale (lite-s ... l, any case) or registered model name (`eseg "
                                             f"models`); {_r('scale')}, or --init-from's model."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d",
                                          help="cityscapes, ade20k, synthetic or folder (default: the built-in "
                                               "synthetic set, generated on first use)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="A recipe YAML instead of recipes/<dataset>.yaml."),
    run_dir: Optional[Path] = typer.Option(None, "--out", "-o", "--run-dir", help="Run folder (default: runs/<scale>-"
                                                                                   "<dataset>-<time>, made unique)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder exactly where its "
                                                                 "last checkpoint stopped (with --steps: a new "
                                                                 "total; with --data-root: where its data moved)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help=f"Training iterations; {_r('steps')}."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1,
                                            help=f"Images per step per process; {_r('batch_size')}."),
    crop: Optional[str] = typer.Option(None, "--crop", help=f"Training crop HxW; {_r('crop_size')}."),
    lr: Optional[float] = typer.Option(None, "--lr", help=f"Peak learning rate; {_r('lr')}."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help=f"sgd or adamw; {_r('optimizer')}."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay",
        help=f"L2 weight decay; {_r('weight_decay')}."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", min=0,
        help=f"Linear learning-rate warm-up steps; {_r('warmup_steps')}."),
    loss: Optional[str] = typer.Option(None, "--loss", help=f"ohem or ce; {_r('loss')}."),
    amp: Optional[TRAIN_AMPS] = typer.Option(None, "--amp", case_sensitive=False,
                                               help="bf16 (CPU, XLA, CUDA) or fp16 (CUDA) autocast, none (float32), "
                                                    "or auto: bf16 where the hardware runs it natively (a CPU with "
                                                    f"AVX512-BF16 or AMX, a GPU with bf16), else float32; "
                                                    f"{_r('amp')}."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                            help="torch.compile the training step (model + loss; exact up to "
                                                 f"rounding; compiles in the first step); {_r('compile')}. On 2 CPU "
                                                 "cores it measured slower than eager (benchmarks/README.md)."),
    ema: Optional[float] = typer.Option(None, "--ema",
        help=f"EMA decay of the weights, e.g. 0.9998; {_r('ema_decay')}."),
    clip_grad: Optional[float] = typer.Option(None, "--clip-grad", help=f"Max gradient norm; {_r('clip_grad')}."),
    pretrained: Optional[Path] = typer.Option(
        None, "--pretrained", help="Local encoder weights: a .pth/.pt/.safetensors file or a Hugging Face cache "
                                   "folder, in timm, timm TF-port or efficientnet_pytorch names (never downloads)."),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from", help="Start from another run's weights (a run folder or .pt): every tensor whose name "
                                  "and shape match; a classifier for another class count is re-initialised."),
    freeze_encoder: Optional[int] = typer.Option(None, "--freeze-encoder", min=0, metavar="STEPS",
                                                 help="Keep the encoder fixed (lr 0) for the first STEPS steps."),
    encoder_lr_mult: Optional[float] = typer.Option(None, "--encoder-lr-mult", min=0.0,
                                                    help="The encoder's learning rate is --lr times this."),
    extra_data: Optional[list[Path]] = typer.Option(
        None, "--extra-data", help="Another training source in the folder-dataset layout (e.g. from `eseg "
                                   "pseudo-label`), mixed in at --extra-ratio; repeatable."),
    extra_ratio: Optional[float] = typer.Option(None, "--extra-ratio", min=0.0, max=1.0,
                                                help="Share of training samples drawn from each --extra-data "
                                                     f"source; {_r('extra_ratio')}."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                         help=f"Data-loader workers per process; {_r('workers')}."),
    eval_interval: Optional[int] = typer.Option(None, "--eval-interval", min=1,
                                               help=f"Validate every N steps; {_r('eval_interval')}."),
    log_interval: Optional[int] = typer.Option(None, "--log-interval", min=1,
                                              help=f"Log every N steps; {_r('log_interval')}."),
    seed: Optional[int] = typer.Option(None, "--seed",
        help=f"Random seed (data order, augmentation, init); {_r('seed')}."),
    device: Optional[str] = typer.Option(None, "--device", autocompletion=complete_device,
                                          help=f"auto, cpu, cuda[:N] or xla (torch-xla, PJRT); {_r('device')}."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any config key: --set key=value (YAML value), "
                                                                 "repeatable."),
    check: bool = typer.Option(True, "--check/--no-check", help="Read every image/label pair before training "
                               "(cached by file size and time)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Start over in an existing --run-dir without asking (the "
                                                        "old run is moved to <name>.old-<time>)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write the log and validation rows as "
                                     "TensorBoard scalars to <run>/tensorboard (pip install 'eseg\\[tensorboard]'; "
                                     "view with: tensorboard --logdir runs); default: from the recipe "
                                     "(tensorboard: false)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="A progress bar on a terminal; plain "
                                                                         "lines per log interval without."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Train a model; the run folder gets config.yaml, log.jsonl, val.jsonl and checkpoints/{last,best}.pt.

    Multi-GPU: [cyan]torchrun --nproc_per_node=8 -m eseg_cli train ...[/] (DDP, nccl; gloo on CPU).

    Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint and prints the command that resumes.

    Examples:

      [cyan]eseg train --scale lite-s[/]                     built-in synthetic set, ~5 min on 2 CPU cores

      [cyan]eseg train -s S -d cityscapes --data-root data/cityscapes --steps 90000[/]

      [cyan]eseg train --resume runs/lite-s-synthetic-20260101-120000[/]

      [cyan]eseg train --resume runs/lite-s-synthetic-20260101-120000 --steps 3000[/]   extend the schedule

      [cyan]eseg train -s lite-s --set ema_decay=0.999 --set amp=bf16[/]

      [cyan]eseg train -s S --amp bf16 --compile[/]            bf16 autocast (fast where the CPU has AVX512-BF16
      or AMX, or on a GPU) and a compiled step
    """
    scale, amp = value(scale), value(amp)
    import torch

    from eseg_cli.cli._progress import ProgressReporter, use_bar
    from eseg_cli.engine import train
    from eseg_cli.engine.initialize import read_init_source
    from eseg_cli.errors import EsegError, Interrupted

    if threads:
        torch.set_num_threads(threads)
    with ProgressReporter(bar=use_bar(progress)) as on_event:
        try:
            if resume is not None:
                given = [n for n, v in (("--dataset", dataset), ("--recipe", recipe), ("--batch-size", batch_size),
                                        ("--crop", crop), ("--lr", lr), ("--extra-data", extra_data),
                                        ("--init-from", init_from), ("--scale", scale), ("--set", set_),
                                        ("--tensorboard", tensorboard), ("--compile", compile_ is not None))
                         if v]
                if given:
                    raise EsegError(f"--resume continues the run with its saved config.yaml; drop {', '.join(given)}"
                                    " (only --steps and --data-root may change), or start a new run")
                summary = train({}, resume, resume=True, steps=steps, data_root=data_root, on_event=on_event)
            else:
                init = read_init_source(init_from) if init_from else None  # read once, handed to the trainer
                if scale is None and init is not None:  # the architecture of the run it starts from
                    scale = (init.get("model_config") or {}).get("name")
                cfg = _config(scale, dataset, recipe, set_, dict(
                    data_root=str(data_root) if data_root else None, steps=steps, batch_size=batch_size,
                    crop_size=crop, lr=lr, optimizer=optimizer, weight_decay=weight_decay, warmup_steps=warmup_steps,
                    loss=loss, amp=amp, ema_decay=ema, clip_grad=clip_grad,
                    pretrained=str(pretrained) if pretrained else None, workers=workers, eval_interval=eval_interval,
                    init_from=str(init_from) if init_from else None, freeze_encoder_steps=freeze_encoder,
                    encoder_lr_mult=encoder_lr_mult, extra_ratio=extra_ratio,
                    log_interval=log_interval, seed=seed, device=device, check_data=None if check else False,
                    tensorboard=True if tensorboard else None, compile=compile_),
                    extra_data)
                overwrite = run_dir is not None and _confirm_start_over(run_dir, yes)
                summary = train(cfg, run_dir, overwrite=overwrite, on_event=on_event, init=init)
        except Interrupted as e:
            e.resume = f"run: {_resume_command(e.summary.get('run_dir', resume), threads)}"
            raise
    _report(summary, json_out)


def _config(scale, dataset, recipe, set_, flags: dict, extra_data):
    """The recipe, then ``--set key=value`` items, then the flags that were given."""
    from eseg_cli.engine import load_config
    from eseg_cli.utils import parse_size

    overrides: dict = parse_sets(set_ or [])
    if flags.get("crop_size"):
        flags["crop_size"] = list(parse_size(flags["crop_size"], "--crop"))
    overrides.update({k: v for k, v in flags.items() if v is not None})  # flags beat --set, unset flags don't
    if extra_data:
        overrides["extra_data"] = [{"dataset": "folder", "root": str(d)} for d in extra_data]  # at extra_ratio
    return load_config(dataset, scale, overrides, recipe=recipe)


def _confirm_start_over(run_dir: Path, yes: bool) -> bool:
    """Whether ``run_dir`` holds a run that the user agreed to move aside (asks on a terminal)."""
    from eseg_cli.run import Run

    if not Run(run_dir).holds_run():
        return False
    confirm_overwrite(run_dir, yes, f"this run (it is moved to {run_dir.name}.old-<time>; --resume continues it "
                                    "instead)")
    return True


def _resume_command(run, threads) -> str:
    """The exact command that continues ``run`` (under torchrun: with the same launcher options)."""
    import os
    import shlex

    tail = f"train --resume {shlex.quote(str(run))}" + (f" --threads {threads}" if threads else "")
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"torchrun <the same launcher options> -m eseg_cli {tail}"
    return f"eseg {tail}"


def _report(summary: dict, json_out: bool) -> None:
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    if json_out:
        print_json({k: v for k, v in summary.items() if k != "history"})
        return
    best = summary.get("best_mIoU")
    best_txt = f"best val mIoU {best:.2f} at step {summary['best_step']}" if best is not None else "no validation"
    err_console.print(f"[green]done[/]: {summary['steps']} steps in {summary['seconds']:.0f} s, {best_txt}; "
                      f"run folder {summary['run_dir']}")
    err_console.print(f"evaluate: [cyan]eseg eval --checkpoint {summary['checkpoint']}[/]")
