"""Progress on the command line: library events (:mod:`eseg_cli.events`) shown as a rich bar or plain lines.

A bar when stdout and stderr are terminals; otherwise (SLURM, CI, ``| tee``) or with ``--no-progress``,
plain lines: one per log interval for training, about one per tenth of the work for the other tasks.
Everything goes to stderr, so ``--json`` output on stdout stays one document.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console

from eseg_cli.cli._common import err_console

_LABELS = {"train": "train", "eval": "eval", "prepare": "prepare", "ablate": "ablate", "predict": "images",
           "video": "video"}


def use_bar(progress: bool = True) -> bool:
    """Whether to draw a bar: asked for, and both stdout and stderr are terminals."""
    return progress and sys.stdout.isatty() and err_console.is_terminal


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _log_fields(metrics: dict) -> str:
    parts = []
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.2e}")
    if "images_per_s" in metrics:
        parts.append(f"{metrics['images_per_s']:.1f} img/s")
    return "  ".join(parts)


def _val_line(ev) -> str:
    m = ev.metrics
    best = m.get("best_mIoU")
    tail = f"  (best {best:.2f} at step {m.get('best_step')})" if best is not None and best >= 0 else ""
    return f"step {ev.step}: val mIoU {m['mIoU']:.2f}  pixAcc {m['pixAcc']:.2f}{tail}"


class ProgressReporter:
    """The ``on_event`` callback of a command: ``with ProgressReporter(bar=use_bar(progress)) as on_event: ...``.

    ``quiet`` shows nothing (for ``--json`` commands whose only output is their document).
    """

    def __init__(self, bar: bool, quiet: bool = False, console: Console | None = None):
        self.bar, self.quiet = bar, quiet
        self.console = console or err_console
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._started: dict[str, tuple[float, int]] = {}  # task -> (time, step) at start
        self._printed: dict[str, int] = {}  # task -> last tenth printed (plain lines)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # ------------------------------------------------------------------ the callback
    def __call__(self, ev) -> None:
        if self.quiet:
            return
        if ev.kind == "start":
            self._started[ev.task] = (time.perf_counter(), ev.step)
            self._printed[ev.task] = 0  # the start line covers the first tenth
        if self.bar:
            self._draw(ev)
        else:
            self._line(ev)

    def _print(self, text: str) -> None:
        target = self._progress.console if self._progress is not None else self.console
        target.print(text, highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ bar
    def _draw(self, ev) -> None:
        if ev.kind == "message":
            self._print(ev.message or "")
            return
        if ev.kind == "val":
            self._print(_val_line(ev))
            return
        if ev.kind == "advance" and ev.message:
            self._print(f"{ev.item}: {ev.message}" if ev.item else ev.message)
        p = self._bar()
        label = _LABELS.get(ev.task, ev.task) + (f" {ev.item}" if ev.item else "")
        if ev.kind == "start" or ev.task not in self._tasks:
            if ev.task in self._tasks:
                p.reset(self._tasks[ev.task], total=ev.total, completed=ev.step, label=label, fields="")
            else:
                self._tasks[ev.task] = p.add_task(ev.task, total=ev.total, completed=ev.step, label=label, fields="")
            return
        kw = {"completed": ev.step, **({"label": label} if ev.item else {})}
        if ev.kind == "log":
            kw["fields"] = _log_fields(ev.metrics)
        p.update(self._tasks[ev.task], **kw)

    def _bar(self):
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("[bold]{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[fields]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                      TimeRemainingColumn(), console=self.console)
            self._progress.start()
        return self._progress

    # ------------------------------------------------------------------ plain lines
    def _line(self, ev) -> None:
        name = _LABELS.get(ev.task, ev.task)
        if ev.kind == "message":
            self._print(ev.message or "")
        elif ev.kind == "val":
            self._print(f"{name} {_val_line(ev)}")
        elif ev.kind == "start":
            what = f" {ev.item}" if ev.item else ""
            self._print(f"{name}{what}: {ev.step}/{ev.total if ev.total is not None else '?'}")
        elif ev.kind == "log":
            self._print(f"{name} {self._position(ev)}  {_log_fields(ev.metrics)}")
        elif ev.kind == "advance" and ev.task != "train" and ev.total:
            tenth = ev.step * 10 // ev.total
            if tenth > self._printed.get(ev.task, -1) or ev.step == ev.total or ev.message:
                self._printed[ev.task] = tenth
                item = f"  {ev.item}" if ev.item else ""
                note = f": {ev.message}" if ev.message else ""
                self._print(f"{name} {self._position(ev)}{item}{note}")
        elif ev.kind == "end" and ev.task in self._started:
            t0, _ = self._started.pop(ev.task)
            self._print(f"{name}: done, {ev.step}/{ev.total if ev.total is not None else '?'} in "
                        f"{_duration(time.perf_counter() - t0)}")

    def _position(self, ev) -> str:
        text = f"{ev.step}/{ev.total}" if ev.total else str(ev.step)
        t0, s0 = self._started.get(ev.task, (None, 0))
        if t0 is not None and ev.total and ev.step > s0:
            elapsed = time.perf_counter() - t0
            eta = elapsed / (ev.step - s0) * (ev.total - ev.step)
            text += f"  elapsed {_duration(elapsed)}  eta {_duration(eta)}"
        return text
