"""Progress events: how long-running library work (train, eval, prepare-data, ablate, predict, pseudo-label) reports
progress.

The library never draws: it calls ``on_event(Event(...))`` and the caller decides what to show (the CLI
draws a rich bar on a terminal and prints plain lines otherwise; a test collects the events in a list).

Kinds:

- ``start``: a task begins; ``total`` is its length (steps, images, cells) and ``step`` where it starts.
- ``advance``: ``step`` of ``total`` is done (cheap: no metrics, may come every step or image).
- ``log``: a row of ``metrics`` worth printing (train: once per log interval, loss, lr, images/s).
- ``val``: validation ``metrics`` at ``step`` (mIoU, pixAcc, ...).
- ``message``: a sentence for the user (``message``), e.g. which data a run uses, or that it resumed.
- ``end``: the task finished (or stopped) at ``step``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("start", "advance", "log", "val", "message", "end")


@dataclass(frozen=True)
class Event:
    """One progress report of ``task`` (``train``, ``eval``, ``prepare``, ``ablate``, ``predict``, ``video``,
    ``pseudo-label``); see the module doc."""

    kind: str
    task: str
    step: int = 0
    total: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    item: str | None = None  # what the step is about (an ablation cell, an image), when it has a name

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; one of {', '.join(KINDS)}")


OnEvent = Callable[[Event], None]


class Emitter:
    """Bind a callback to a task name: ``emit = Emitter(on_event, "eval"); emit("advance", step=3)``.

    A ``None`` callback makes every call a no-op, so library code never checks for it.
    """

    def __init__(self, on_event: OnEvent | None, task: str, total: int | None = None):
        self.on_event, self.task, self.total = on_event, task, total

    def __call__(self, kind: str, step: int = 0, **kw) -> None:
        if self.on_event is not None:
            kw.setdefault("total", self.total)
            self.on_event(Event(kind, self.task, step, **kw))

    def message(self, text: str, step: int = 0) -> None:
        self(kind="message", step=step, message=text)


def tee(*callbacks: OnEvent | None) -> OnEvent | None:
    """One callback that passes each event to every given one (``None`` entries are skipped)."""
    live = [c for c in callbacks if c is not None]
    if len(live) <= 1:
        return live[0] if live else None

    def on_event(ev: Event) -> None:
        for c in live:
            c(ev)

    return on_event
