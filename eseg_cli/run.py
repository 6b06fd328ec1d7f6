"""The run folder: the one place that knows where a training run keeps its files.

Layout::

    RUN/config.yaml              the resolved config (the current one; a --resume that changes it rewrites it)
    RUN/config_history.jsonl     one row per start and resume: when, at which step, what changed
    RUN/log.jsonl                one row every log_interval steps (loss, lr, images/s, memory)
    RUN/val.jsonl                one row per validation (mIoU, pixAcc, mAcc, fwIoU)
    RUN/val_latest.json          the last validation in full (per class)
    RUN/pretrained.json          what the pretrained encoder weights loaded (when ``pretrained`` is set)
    RUN/init_from.{json,txt}     what ``init_from`` loaded and skipped (when set)
    RUN/summary.json             what train() returned
    RUN/checkpoints/last.pt      every checkpoint_interval steps, at the end, and when stopped by a signal
    RUN/checkpoints/best.pt      the checkpoint with the best validation mIoU
    RUN/eval_<mode>.json         evaluation results per inference mode (whole, slide, msflip) ...
    RUN/eval_<mode>_confusion.csv  ... and their confusion matrices

Runs never mix: a new run gets a folder of its own (:meth:`Run.create` claims the name with an atomic
``mkdir``), starting over in a folder that holds a run first moves the old run aside
(:meth:`Run.move_aside`), and one process at a time trains in a folder (:meth:`Run.lock`).

This module imports no torch, so the command line can use it cheaply.
"""

from __future__ import annotations

import itertools
import json
import os
from datetime import datetime
from pathlib import Path

import yaml

from eseg_cli.errors import EsegError
from eseg_cli.utils import atomic_write_json, atomic_write_text, folder_lock, read_jsonl, remove_if_only_lock

CHECKPOINT_NAMES = ("best", "last")
_RUN_FILES = ("config.yaml", "log.jsonl", "val.jsonl", "summary.json")


def _timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


class Run:
    """A training run's folder. ``Run(path)`` only names it; nothing is created until asked."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------------ layout
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def history_path(self) -> Path:
        return self.path / "config_history.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def val_path(self) -> Path:
        return self.path / "val.jsonl"

    @property
    def val_latest_path(self) -> Path:
        return self.path / "val_latest.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_path(self, which: str = "last") -> Path:
        """Where ``last.pt`` or ``best.pt`` lives (whether or not it exists yet)."""
        if which not in CHECKPOINT_NAMES:
            raise EsegError(f"checkpoint name must be one of {', '.join(CHECKPOINT_NAMES)}, got {which!r}")
        return self.checkpoint_dir / f"{which}.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_path("last")

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_path("best")

    def checkpoint(self) -> Path:
        """The checkpoint to use from this run: ``best.pt``, else ``last.pt`` (raises if it has neither)."""
        for which in CHECKPOINT_NAMES:
            if self.checkpoint_path(which).is_file():
                return self.checkpoint_path(which)
        raise EsegError(f"run folder {self.path} has no checkpoints/best.pt or checkpoints/last.pt; "
                        "was it trained by eseg train?")

    @staticmethod
    def eval_stem(mode: str | None = None) -> str:
        """``eval_<mode>`` for a model evaluated in ``mode``; ``eval`` for scored prediction files."""
        return f"eval_{mode}" if mode else "eval"

    def eval_paths(self, mode: str | None = None) -> dict[str, Path]:
        """The evaluation JSON and confusion-matrix CSV of ``mode`` in this folder."""
        stem = self.eval_stem(mode)
        return {"json": self.path / f"{stem}.json", "confusion_csv": self.path / f"{stem}_confusion.csv"}

    def evaluations(self) -> dict[str, dict[str, Path]]:
        """Every evaluation saved in this folder, by stem (``eval``, ``eval_whole``, ``eval_slide`` ...), as
        :meth:`eval_paths` gives them."""
        stems = sorted(f.stem for f in self.path.glob("eval*.json") if f.stem == "eval" or f.stem.startswith("eval_"))
        return {stem: {"json": self.path / f"{stem}.json", "confusion_csv": self.path / f"{stem}_confusion.csv"}
                for stem in stems}

    # ------------------------------------------------------------------ finding runs
    @classmethod
    def of(cls, path: str | os.PathLike) -> Run:
        """The run that ``path`` belongs to: a run folder, its ``checkpoints`` folder, or a checkpoint file in it.

        A checkpoint file outside a run folder gives the folder holding it (where its evaluations go).
        """
        p = Path(path)
        if p.is_dir():
            return cls(p.parent if p.name == "checkpoints" and not (p / "checkpoints").is_dir() else p)
        return cls(p.parent.parent if p.parent.name == "checkpoints" else p.parent)

    def holds_run(self) -> bool:
        """Whether this folder holds (part of) a training run."""
        return self.path.is_dir() and (any((self.path / f).exists() for f in _RUN_FILES)
                                       or any(self.checkpoint_dir.glob("*.pt")))

    @classmethod
    def find(cls, paths) -> list[Run]:
        """Run folders (holding a ``log.jsonl`` or ``val.jsonl``) at or under each of ``paths``, sorted."""
        runs: set[Run] = set()
        for p in paths:
            p = Path(p)
            if not p.exists():
                raise EsegError(f"{p} does not exist; give a run folder or a folder of runs", field="results")
            if p.is_dir():
                runs |= {cls(f.parent) for pat in ("log.jsonl", "val.jsonl") for f in p.rglob(pat)}
        return sorted(runs, key=lambda r: r.path)

    # ------------------------------------------------------------------ creating, replacing, locking
    @staticmethod
    def default_name(scale: str, dataset: str) -> str:
        """``<scale>-<dataset>-<YYYYmmdd-HHMMSS>`` (made unique by :meth:`create`), e.g.
        ``lite-s-synthetic-20260101-120000`` for ``eseg-lite-s``."""
        scale = str(scale).lower()
        return f"{scale.removeprefix('eseg-')}-{dataset}-{_timestamp()}"

    @classmethod
    def create(cls, parent: str | os.PathLike, name: str) -> Run:
        """Make a new, empty run folder ``parent/name``, or ``name-2``, ``name-3`` ... if taken.

        ``mkdir`` either creates the folder or fails, so two processes starting at the same moment
        never get the same folder.
        """
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        for i in itertools.count(1):
            path = parent / (name if i == 1 else f"{name}-{i}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise AssertionError("unreachable")

    def move_aside(self) -> Path:
        """Rename this folder to ``<name>.old-<time>`` (``-2`` ... if taken) and return the new path.

        Refused while another process trains in it.
        """
        with self.lock():
            pass  # only checks that no one else holds it; the lock file moves with the folder
        stem = f"{self.name}.old-{_timestamp()}"
        for i in itertools.count(1):
            dest = self.path.with_name(stem if i == 1 else f"{stem}-{i}")
            try:
                dest.mkdir()  # claim the name; renaming onto an empty folder replaces it atomically (POSIX)
            except FileExistsError:
                continue
            try:
                os.replace(self.path, dest)
            except OSError:
                dest.rmdir()
                raise
            return dest
        raise AssertionError("unreachable")

    def lock(self):
        """Hold ``RUN/.lock`` for as long as the block runs; an EsegError if another process holds it
        (:func:`~eseg_cli.utils.folder_lock`: an OS lock that goes away with the process)."""
        return folder_lock(self.path, f"run folder {self.path} is in use by another training process; wait for "
                                      "it to finish, or choose another run folder")

    def remove_if_unused(self) -> bool:
        """Delete this folder if nothing but its lock file is in it (a run that failed before it started)."""
        return remove_if_only_lock(self.path)

    def clean_stale_tmp(self) -> list[Path]:
        """Delete the temporary files (``.<name>.<random>.tmp``) that a write killed halfway left behind.

        Call it only while holding :meth:`lock`: then no write of this run is in flight.
        """
        removed = []
        for folder in (self.path, self.checkpoint_dir):
            if folder.is_dir():
                for f in folder.glob(".*.tmp"):
                    if f.is_file():
                        f.unlink(missing_ok=True)
                        removed.append(f)
        return removed

    # ------------------------------------------------------------------ config and history
    def read_config(self) -> dict | None:
        """The saved config as a dict, or None when there is none (or it is not a mapping)."""
        try:
            cfg = yaml.safe_load(self.config_path.read_text()) if self.config_path.is_file() else None
        except (OSError, yaml.YAMLError):
            return None
        return cfg if isinstance(cfg, dict) else None

    def load_config(self) -> dict | None:
        """The saved config as a dict (None when there is none); a damaged one is an EsegError naming it."""
        if not self.config_path.is_file():
            return None
        try:
            cfg = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise EsegError(f"{self.config_path} is damaged ({' '.join(str(e).split())}); restore it from the "
                            "checkpoint's config or fix the edit") from None
        if not isinstance(cfg, dict):
            raise EsegError(f"{self.config_path} is damaged: a run's config is a mapping of keys, got "
                            f"{type(cfg).__name__}")
        return cfg

    def write_config(self, config: dict) -> Path:
        return atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def record(self, event: str, step: int, changes: dict | None = None) -> None:
        """Append a row to ``config_history.jsonl``: ``event`` (start, resume) at ``step``, with
        ``changes`` as ``{key: [old, new]}``."""
        row = {"time": datetime.now().isoformat(timespec="seconds"), "event": event, "step": step}
        if changes:
            row["changes"] = changes
        self._append(self.history_path, row)

    def read_history(self) -> list[dict]:
        return _read_jsonl(self.history_path)

    # ------------------------------------------------------------------ logs
    def append_log(self, row: dict) -> None:
        self._append(self.log_path, row)

    def append_val(self, row: dict) -> None:
        self._append(self.val_path, row)

    def read_log(self) -> list[dict]:
        """Rows of ``log.jsonl`` (a line cut short by a killed run is skipped)."""
        return _read_jsonl(self.log_path)

    def read_val(self) -> list[dict]:
        """Rows of ``val.jsonl`` (a line cut short by a killed run is skipped)."""
        return _read_jsonl(self.val_path)

    def truncate_logs(self, step: int) -> list[dict]:
        """Drop log and validation rows written after ``step`` (a run killed between a row and its checkpoint);
        return the validation rows kept."""
        kept_val = []
        for path in (self.log_path, self.val_path):
            lines = [x for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
            keep = [r for r in _read_jsonl(path) if r.get("step", 0) <= step]
            if len(keep) != len(lines):
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
            if path == self.val_path:
                kept_val = keep
        return kept_val

    # ------------------------------------------------------------------ results
    def write_val_latest(self, metrics: dict) -> Path:
        return atomic_write_json(self.val_latest_path, metrics)

    def write_pretrained_report(self, report: dict) -> Path:
        return atomic_write_json(self.path / "pretrained.json", report)

    def write_init_report(self, report: dict, table: str) -> None:
        atomic_write_json(self.path / "init_from.json", report)
        atomic_write_text(self.path / "init_from.txt", table + "\n")

    def write_summary(self, summary: dict) -> Path:
        return atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict | None:
        try:
            s = json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None
        return s if isinstance(s, dict) else None

    @staticmethod
    def _append(path: Path, row: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file from ``path``: the file itself, or a run folder's (or its ``checkpoints`` folder's)
    ``best.pt``, else ``last.pt``."""
    p = Path(path)
    if not p.is_dir():
        if not p.is_file():
            raise EsegError(f"checkpoint {p} not found; give a .pt file or a run folder with checkpoints/best.pt")
        return p
    for cand in (*(Run(p).checkpoint_path(w) for w in CHECKPOINT_NAMES), p / "best.pt", p / "last.pt"):
        if cand.is_file():
            return cand
    raise EsegError(f"checkpoint {p} not found; give a .pt file or a run folder with checkpoints/best.pt")


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a run's JSON-lines file (a last line cut short by a killed run is left out)."""
    return [r for r in read_jsonl(path)[0] if isinstance(r, dict)]
