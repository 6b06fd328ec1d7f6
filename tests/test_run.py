"""The run folder and the training loop's guarantees: runs never mix, checkpoint before validation,
stale temporary files cleared, resume extended or relocated, SIGINT / SIGTERM stop with a checkpoint."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from toydata import Toy
from typer.testing import CliRunner

import eseg_cli.engine.trainer as trainer_mod
from eseg_cli import run as run_mod
from eseg_cli.cli import app
from eseg_cli.cli._progress import ProgressReporter
from eseg_cli.engine import train
from eseg_cli.engine.schedule import warmup_cosine_factor
from eseg_cli.errors import EsegError, Interrupted
from eseg_cli.events import Event
from eseg_cli.inference.runtime import load_checkpoint
from eseg_cli.models import build_model
from eseg_cli.run import Run, resolve_checkpoint

TINY = dict(width=0.25, depth=0.3, channels=16, repeats=1)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw):
    cfg = dict(scale="lite-s", model=TINY, batch_size=2, steps=4, warmup_steps=1, log_interval=1, eval_interval=2,
               checkpoint_interval=2, workers=0, optimizer="adamw", lr=1e-3, loss="ce", ema_decay=None)
    cfg.update(kw)
    return cfg


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("lite-s", 3, **TINY)


def _train(cfg, run_dir, **kw):
    kw.setdefault("model", _model())
    kw.setdefault("train_dataset", Toy(4, size=32))
    kw.setdefault("val_dataset", Toy(2, seed=1, size=32))
    return train(cfg, run_dir, **kw)


def _steps(path: Path) -> list[int]:
    return [json.loads(x)["step"] for x in path.read_text().splitlines()]


# ---------------------------------------------------------------- the Run object

def test_layout_and_checkpoint_resolution(tmp_path):
    run = Run(tmp_path / "r")
    assert run.last_checkpoint == tmp_path / "r" / "checkpoints" / "last.pt"
    assert run.eval_paths("slide")["json"].name == "eval_slide.json"
    assert run.eval_paths()["confusion_csv"].name == "eval_confusion.csv"  # scored prediction files
    with pytest.raises(EsegError, match="not found"):
        resolve_checkpoint(run.path)
    run.checkpoint_dir.mkdir(parents=True)
    run.last_checkpoint.write_bytes(b"x")
    assert resolve_checkpoint(run.path) == run.last_checkpoint  # no best.pt yet: last.pt
    run.best_checkpoint.write_bytes(b"x")
    assert resolve_checkpoint(run.path) == resolve_checkpoint(run.checkpoint_dir) == run.best_checkpoint
    assert Run.of(run.last_checkpoint) == Run.of(run.checkpoint_dir) == Run.of(run.path) == run
    assert Run.of(tmp_path / "loose.pt") == Run(tmp_path)  # a checkpoint outside a run: its folder


def test_create_is_unique_under_concurrency(tmp_path):
    made, barrier = [], threading.Barrier(8)

    def go():
        barrier.wait()
        made.append(Run.create(tmp_path, "lite-s-synthetic-20260101-120000").path)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8
    assert sorted(p.name for p in made)[:2] == ["lite-s-synthetic-20260101-120000",
                                                "lite-s-synthetic-20260101-120000-2"]


def test_two_trainings_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_mod, "_timestamp", lambda: "20260101-120000")  # both start "in the same second"
    a = _train(tiny_cfg(steps=1), None)
    b = _train(tiny_cfg(steps=1), None)
    assert a["run_dir"] != b["run_dir"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["lite-s-synthetic-20260101-120000",
                                                                     "lite-s-synthetic-20260101-120000-2"]
    for s in (a, b):
        assert _steps(Path(s["run_dir"]) / "log.jsonl") == [1]


def test_failed_start_leaves_no_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EsegError, match="fewer than one batch"):
        _train(tiny_cfg(batch_size=8), None)
    assert list((tmp_path / "runs").iterdir()) == []


def test_starting_over_moves_the_old_run_aside(tmp_path):
    run = tmp_path / "run"
    _train(tiny_cfg(steps=4), run)
    old_log = (run / "log.jsonl").read_text()
    with pytest.raises(EsegError, match="already holds a run"):
        _train(tiny_cfg(steps=2), run)
    s = _train(tiny_cfg(steps=2), run, overwrite=True)
    assert _steps(run / "log.jsonl") == [1, 2] and _steps(run / "val.jsonl") == [2]  # no old rows
    assert s["steps"] == 2 and [h["step"] for h in s["history"]] == [2]
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "log.jsonl").read_text() == old_log and load_checkpoint(old / "checkpoints" / "last.pt")["step"] == 4


def test_cli_yes_over_existing_run(tmp_path):
    run = tmp_path / "run"
    _train(tiny_cfg(steps=1), run)
    r = CliRunner().invoke(app, ["train", "--run-dir", str(run), "--steps", "1"])
    assert r.exit_code == 2 and "--yes" in r.output and not list(tmp_path.glob("run.old-*"))


def test_a_run_in_use_is_refused(tmp_path):
    run = tmp_path / "run"
    _train(tiny_cfg(steps=2), run)
    with Run(run).lock():
        with pytest.raises(EsegError, match="in use by another training process"):
            _train({}, run, resume=True, steps=3)
        with pytest.raises(EsegError, match="in use"):
            Run(run).move_aside()


# ---------------------------------------------------------------- the loop's order and resume

def test_checkpoint_is_written_before_validation(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = trainer_mod.evaluate_model

    def broken(*a, **k):
        raise RuntimeError("validation broke")

    monkeypatch.setattr(trainer_mod, "evaluate_model", broken)
    with pytest.raises(RuntimeError, match="validation broke"):
        _train(tiny_cfg(steps=4, checkpoint_interval=2, eval_interval=2), run)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2  # the step survived its validation
    monkeypatch.setattr(trainer_mod, "evaluate_model", real)
    events = []
    s = _train({}, run, resume=True, on_event=events.append)
    # the validation that failed runs first on resume, then training goes on
    assert [h["step"] for h in s["history"]] == [2, 4] and s["finished"]
    assert [e.step for e in events if e.kind == "val"] == [2, 4]


def test_stale_temporary_files_are_removed(tmp_path):
    run = tmp_path / "run"
    _train(tiny_cfg(steps=2), run, stop_after=1)
    stale = [run / "checkpoints" / ".last.pt.k1ll3d.tmp", run / ".summary.json.x.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    keep = run / "checkpoints" / "notes.tmp"  # not one of ours (no leading dot)
    keep.write_text("mine")
    events = []
    _train({}, run, resume=True, on_event=events.append)
    assert not any(p.exists() for p in stale) and keep.exists()
    assert any(e.kind == "message" and "2 temporary file(s)" in e.message for e in events)


def test_resume_extends_the_schedule(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(steps=4, warmup_steps=1, lr=1e-2, checkpoint_interval=4)
    s1 = _train(cfg, run)
    assert s1["finished"]
    with pytest.raises(EsegError, match="already at step 4"):
        _train({}, run, resume=True, steps=3)
    s2 = _train({}, run, resume=True, steps=8)
    assert s2["finished"] and s2["steps"] == 8 and s2["total_steps"] == 8
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    # steps 1-4 followed the 4-step cosine, 5-8 the recomputed 8-step one (lr after each step's scheduler.step)
    c = yaml.safe_load((run / "config.yaml").read_text())
    for r in rows:
        total = 4 if r["step"] <= 4 else 8
        f = warmup_cosine_factor(r["step"], total, c["warmup_steps"], c["warmup_factor"], c["min_lr_ratio"])
        assert r["lr"] == pytest.approx(1e-2 * f, rel=1e-6, abs=1e-12)
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 8
    hist = Run(run).read_history()
    assert [h["event"] for h in hist] == ["start", "resume"]  # the refused resume changed nothing
    assert hist[-1]["changes"] == {"steps": [4, 8]} and hist[-1]["step"] == 4
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["steps"] == 8


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from eseg_cli.data import synthetic

    root = tmp_path_factory.mktemp("syn") / "data"
    synthetic.generate(root, num_train=4, num_val=2, size=(64, 128), seed=0)
    return root


def test_data_root_is_absolute_and_can_be_relocated(tmp_path, syn, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(syn, tmp_path / "data")
    cfg = tiny_cfg(dataset="synthetic", data_root="data", crop_size=[64, 64], steps=2, ohem_min_kept=100)
    _train(cfg, "run", model=None, train_dataset=None, val_dataset=None, stop_after=1)
    saved = yaml.safe_load(Path("run/config.yaml").read_text())["data_root"]
    assert saved == str(tmp_path / "data")  # stored absolute: eval and --resume work from any folder
    (tmp_path / "data").rename(tmp_path / "moved")
    with pytest.raises(EsegError):
        train({}, "run", resume=True)
    monkeypatch.chdir(tmp_path / "moved")  # relative to where the command runs
    s = train({}, tmp_path / "run", resume=True, data_root=".")
    assert s["finished"] and s["steps"] == 2
    assert Run(tmp_path / "run").read_history()[-1]["changes"] == {"data_root": [saved, str(tmp_path / "moved")]}
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data_root"] == str(tmp_path / "moved")


def test_cuda_rng_states_restored_for_visible_devices_only(monkeypatch):
    from eseg_cli.engine import checkpoint as ckpt

    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: calls.append((int(s[0]), i)))
    saved = [torch.tensor([k], dtype=torch.uint8) for k in range(8)]  # saved with 8 visible GPUs
    with pytest.warns(UserWarning, match="8 devices but 2 are visible"):
        ckpt._set_cuda_rng_states(saved)
    assert calls == [(0, 0), (1, 1)]


# ---------------------------------------------------------------- progress events

def test_train_emits_one_event_protocol(tmp_path):
    events: list[Event] = []
    _train(tiny_cfg(steps=4, log_interval=2), tmp_path / "run", on_event=events.append)
    assert {e.task for e in events} == {"train"}
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[0].total == 4
    assert [e.step for e in events if e.kind == "log"] == [2, 4]
    assert [e.step for e in events if e.kind == "advance"] == [1, 3]
    assert set(events[kinds.index("log")].metrics) >= {"loss", "lr", "images_per_s"}


def test_plain_lines_without_a_terminal():
    buf = io.StringIO()
    rep = ProgressReporter(bar=False, console=Console(file=buf, width=200))
    rep(Event("start", "train", 0, total=10))
    for s in range(1, 11):
        rep(Event("advance", "train", s, total=10))
    rep(Event("log", "train", 10, total=10, metrics={"loss": 0.5, "lr": 1e-3, "images_per_s": 3.0}))
    rep(Event("start", "eval", 0, total=100))
    for s in range(1, 101):
        rep(Event("advance", "eval", s, total=100))
    rep(Event("end", "eval", 100, total=100))
    lines = buf.getvalue().splitlines()
    assert sum("train" in x for x in lines) == 2  # start + one line per log interval, none per step
    assert "loss 0.5000" in lines[1] and "lr 1.00e-03" in lines[1]
    assert sum(x.startswith("eval ") for x in lines) == 10  # about one line per tenth
    assert lines[-1].startswith("eval: done, 100/100")


# ---------------------------------------------------------------- signals (a real process)

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_with_a_checkpoint_and_resume_command(tmp_path, syn, sig):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "eseg_cli", "train", "--dataset", "synthetic", "--data-root", str(syn),
           "--run-dir", str(run), "--steps", "100000", "--batch-size", "2", "--crop", "64x64", "--workers", "0",
           "--log-interval", "1", "--eval-interval", "100000", "--threads", "1", "--no-progress",
           "--set", f"model={TINY}", "--set", "ohem_min_kept=100", "--set", "checkpoint_interval=100000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (run / "log.jsonl").is_file() and len((run / "log.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    logged = _steps(run / "log.jsonl")
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["step"] == logged[-1] >= 2  # the step in flight finished and was saved
    assert f"stopped by {sig.name} after step {ck['step']}" in err
    assert f"eseg train --resume {run} --threads 1" in err
    assert f"train {logged[0]}/100000" in err and "loss" in err  # plain lines: not a terminal
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == sig.name and not summary["finished"]
    if sig == signal.SIGINT:  # the printed command continues it (here with a shorter total, to finish)
        r = CliRunner().invoke(app, ["train", "--resume", str(run), "--steps", str(ck["step"] + 1), "--json"])
        assert r.exit_code == 0, r.output
        assert _steps(run / "log.jsonl") == logged + [ck["step"] + 1]


def test_interrupted_in_process_is_raised_with_summary(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_step = trainer_mod.Trainer.train_step

    def step_then_signal(self, image, target):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step still completes
        return real_step(self, image, target)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step_then_signal)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as e:
        _train(tiny_cfg(steps=10, checkpoint_interval=100), tmp_path / "run")
    assert e.value.exit_code == 130 and e.value.summary["steps"] == 3
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler the run found is back


def test_a_failed_start_removes_the_folder_it_made_but_not_one_the_user_had(tmp_path):
    bad = tmp_path / "notweights.pth"
    bad.write_text("not a weights file")
    new = tmp_path / "new-run"
    with pytest.raises(EsegError, match="could not read pretrained weights"):
        train(tiny_cfg(pretrained=str(bad)), new, train_dataset=Toy(4, size=32), val_dataset=Toy(2, seed=1, size=32))
    assert not new.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(EsegError, match="could not read pretrained weights"):
        train(tiny_cfg(pretrained=str(bad)), mine, train_dataset=Toy(4, size=32), val_dataset=Toy(2, seed=1, size=32))
    assert mine.is_dir()


# ---------------------------------------------------------------- resume and an edited config.yaml (issue 20)

@pytest.mark.parametrize("edit, needle", [
    (lambda c: {**c, "lr": 0.5}, "'lr' 0.001 in the checkpoint, 0.5 in config.yaml"),
    (lambda c: {**c, "steps": 9}, "'steps' 4 in the checkpoint, 9 in config.yaml"),
    (lambda c: "lr: [0.1\n", "config.yaml is damaged"),
    (lambda c: "- a list\n", "config.yaml is damaged"),
])
def test_resume_refuses_an_edited_config_with_the_difference(tmp_path, edit, needle):
    run = tmp_path / "run"
    _train(tiny_cfg(steps=4, checkpoint_interval=4), run)
    cfg_path = run / "config.yaml"
    edited = edit(yaml.safe_load(cfg_path.read_text()))
    cfg_path.write_text(edited if isinstance(edited, str) else yaml.safe_dump(edited, sort_keys=False))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(EsegError) as info:
        _train({}, run, resume=True)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # the edit is not written over


def test_resume_takes_an_explicit_steps_over_the_file(tmp_path):
    run = tmp_path / "run"
    _train(tiny_cfg(steps=4, checkpoint_interval=4), run)
    cfg_path = run / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({**yaml.safe_load(cfg_path.read_text()), "steps": 9}, sort_keys=False))
    assert _train({}, run, resume=True, steps=6)["steps"] == 6  # --steps is the user's explicit word
