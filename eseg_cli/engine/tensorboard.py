"""TensorBoard scalars beside the run's JSONL logs: an ``on_event`` callback (see :mod:`eseg_cli.events`).

``train`` log rows become ``train/<key>`` scalars (loss, lr, images/s, ...) and validation rows ``val/<key>``
(mIoU, pixAcc, ...), at their step, in ``<run>/tensorboard``. The JSONL files stay the record; this is a
view of them. The dependency is optional: ``pip install 'eseg[tensorboard]'``.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from eseg_cli.errors import EsegError
from eseg_cli.events import Event

_PREFIX = {"log": "train", "val": "val"}


def require() -> None:
    """Refuse early (before a run folder is made) when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise EsegError("'tensorboard' needs the tensorboard package: pip install 'eseg[tensorboard]' "
                        "(or set tensorboard: false)", field="tensorboard") from None


class TensorBoardWriter:
    """Writes the numeric metrics of ``log`` and ``val`` events as scalars; use as a context manager.

    ``purge_step``: on resume, the step the run continues from; events a stopped run wrote after it are
    dropped by TensorBoard, so curves never double back.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def __call__(self, ev: Event) -> None:
        prefix = _PREFIX.get(ev.kind)
        if prefix is None:
            return
        for key, v in ev.metrics.items():
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"{prefix}/{key}", float(v), ev.step)
        if ev.kind == "val":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
