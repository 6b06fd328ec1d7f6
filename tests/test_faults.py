"""Faults of the machine, not of the input: a full disk during a checkpoint write and a read-only disk.

A small tmpfs is mounted where the test may do so (root with CAP_SYS_ADMIN); elsewhere the tests skip and
say why. The previous checkpoint must stay loadable and the error must be one clean line.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.engine.checkpoint import save_checkpoint
from eseg_cli.errors import EsegError
from eseg_cli.inference.runtime import load_checkpoint

runner = CliRunner()
TINY = {"width": 0.25, "depth": 0.3, "channels": 16, "repeats": 1}


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the full-disk test cannot run here")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); full-disk test skipped")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, "8m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ENOSPC, then free ``leave`` bytes."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def _state(seed: int) -> dict:
    from eseg_cli.models import build_model

    torch.manual_seed(seed)
    model = build_model("lite-s", num_classes=19, **TINY)
    return {"model": model.state_dict(), "model_config": model.config, "step": seed}


def test_full_disk_during_checkpoint_write_keeps_the_previous_one(small_disk):
    path = small_disk / "run" / "checkpoints" / "last.pt"
    save_checkpoint(_state(1), path)
    before = path.read_bytes()
    _fill(small_disk, leave=len(before) // 3)  # room for a third of the next checkpoint
    with pytest.raises(EsegError) as info:
        save_checkpoint(_state(2), path)
    msg = str(info.value)
    assert str(path) in msg and "disk is full" in msg and "\n" not in msg
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1  # still loadable, still the old one
    assert not list(path.parent.glob("*.tmp"))  # the partial temporary file was removed


def test_full_disk_during_training_is_one_clean_line(small_disk, tmp_path, one_thread):
    from eseg_cli.data import synthetic
    from eseg_cli.engine import train

    syn = tmp_path / "syn"
    synthetic.generate(syn, num_train=2, num_val=1, size=(32, 64), seed=0)
    run = small_disk / "run"
    cfg = {"data_root": str(syn), "steps": 4, "batch_size": 2, "workers": 0, "checkpoint_interval": 1,
           "eval_interval": 100, "log_interval": 1, "crop_size": [32, 32], "model": TINY, "device": "cpu"}
    train(cfg, run, stop_after=1)
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    _fill(small_disk, leave=len(before) // 3)
    res = runner.invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "disk is full" in errors[0], res.output
    assert load_checkpoint(last)["step"] == 1 and last.read_bytes() == before


def test_read_only_disk_is_one_clean_line(tmp_path):
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        res = runner.invoke(app, ["prepare-data", "synthetic", "--out", str(mnt / "syn"), "--num-train", "1",
                                  "--num-val", "0", "--size", "32x32", "--workers", "1"])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "read-only" in errors[0].lower() and str(mnt) in errors[0], res.output
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
