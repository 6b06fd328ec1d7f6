"""Engine: recipes/config validation, OHEM, schedule, checkpoints, exact resume and the NaN stop."""

import json
import math

import pytest
import torch
from torch import nn
from toydata import Toy  # noqa: E402
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.engine import load_config, train
from eseg_cli.engine.checkpoint import save_checkpoint
from eseg_cli.engine.config import validate
from eseg_cli.engine.losses import CrossEntropy, OhemCrossEntropy
from eseg_cli.engine.schedule import WarmupCosine, warmup_cosine_factor
from eseg_cli.errors import EsegError
from eseg_cli.inference.runtime import load_checkpoint, load_model
from eseg_cli.models import build_model

TINY = dict(width=0.25, depth=0.3, channels=16, repeats=1)




pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw):
    cfg = dict(scale="lite-s", model=TINY, batch_size=2, steps=6, warmup_steps=2, log_interval=2, eval_interval=3,
               checkpoint_interval=3, workers=0, optimizer="adamw", lr=1e-3, ohem_min_kept=500, ema_decay=0.9,
               clip_grad=1.0)
    cfg.update(kw)
    return cfg


# ---------------------------------------------------------------- recipes and config

def test_per_scale_block_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 0.01\nsteps: 100\nscales:\n  lite-s: {lr: 0.05}\n  S: {lr: 0.2}\n")
    assert load_config("synthetic", "lite-s", recipe=recipe).lr == 0.05
    assert load_config("synthetic", "eseg-s", recipe=recipe).lr == 0.2
    assert load_config("synthetic", "m", recipe=recipe).lr == 0.01
    assert load_config("synthetic", "lite-s", {"lr": 0.3, "steps": None}, recipe=recipe).lr == 0.3


@pytest.mark.parametrize("text,key", [
    ("lr: 0.01\nlearning_rate: 0.1\n", "learning_rate"),  # unknown key
    ("batch_size: eight\n", "batch_size"),  # wrong type
    ("hflip: 1\n", "hflip"),  # int is not bool
    ("crop_size: [512]\n", "crop_size"),
    ("optimizer: adam\n", "optimizer"),
    ("scales:\n  lite-s: {bogus: 1}\n", "bogus"),
])
def test_bad_recipe_names_the_key(tmp_path, text, key):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(EsegError, match=f"'{key}'"):
        load_config("synthetic", "lite-s", recipe=recipe)


def test_bad_recipe_cli_exit_2(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("steps: 10\nwarmup: 5\n")
    r = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "'warmup'" in r.output and "warmup_steps" in r.output  # names the key, suggests the right one
    assert "Traceback" not in r.output
    r = CliRunner().invoke(app, ["train", "--set", "lr=fast", "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 2 and "'lr'" in r.output
    r = CliRunner().invoke(app, ["train", "--recipe", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "missing.yaml" in r.output


def test_int_accepted_for_float_and_saved_config_round_trips():
    cfg = validate({**load_config().to_dict(), "lr": 1, "crop_size": (128, 256)})
    assert isinstance(cfg.lr, float) and cfg.crop_size == [128, 256]
    assert validate(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- loss and schedule

def test_ohem_keeps_hard_pixels_and_min_kept():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, :] = torch.tensor([6.0, 5.0, 0.0, -5.0])  # class-0 logit; target 0 everywhere
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    per_pixel = nn.functional.cross_entropy(logits, target, reduction="none").flatten()
    # probs of the true class: ~1, ~1, 0.5, ~0 -> two hard pixels (< 0.7)
    loss = OhemCrossEntropy(0.7, min_kept=1)(logits, target)
    assert loss == pytest.approx(per_pixel[2:].mean().item(), rel=1e-5)
    # min_kept = 3 raises the threshold to the 3rd smallest probability
    loss3 = OhemCrossEntropy(0.7, min_kept=3)(logits, target)
    assert loss3 == pytest.approx(per_pixel[1:].mean().item(), rel=1e-5)
    # ignored pixels never count
    target[0, 0, 3] = 255
    loss_ign = OhemCrossEntropy(0.7, min_kept=1)(logits, target)
    assert loss_ign == pytest.approx(per_pixel[2].item(), rel=1e-5)


@pytest.mark.parametrize("loss_fn", [OhemCrossEntropy(0.7, min_kept=50), CrossEntropy()])
def test_losses_read_channels_last_logits_as_rows_with_the_same_values(loss_fn):
    """Channels_last logits (what channels_last training gives the loss) take the row-per-pixel path: the same
    loss and gradient as NCHW logits up to float32 rounding; a bad class id is refused on both paths."""
    from eseg_cli.engine.losses import pixel_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 9, 7) * 3
    target = torch.randint(0, 5, (2, 9, 7))
    target[0, :2] = 255
    results = []
    for x in (logits.clone(), logits.contiguous(memory_format=torch.channels_last)):
        x.requires_grad_()
        loss = loss_fn(x, target)
        loss.backward()
        results.append((loss.detach(), x.grad, pixel_cross_entropy(x, target)))
    (l1, g1, p1), (l2, g2, p2) = results
    assert g2.is_contiguous(memory_format=torch.channels_last) and p2.shape == (2, 9, 7)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(p1, p2)
    assert (p2[0, :2] == 0).all()  # ignored pixels
    bad = target.clone()
    bad[1, 3, 3] = 7  # not a class of 5
    for x in (logits, logits.contiguous(memory_format=torch.channels_last)):
        with pytest.raises((IndexError, RuntimeError)):
            loss_fn(x, bad)


def test_channels_last_training_gives_channels_last_logits_and_eval_the_same_values():
    m = build_model("eseg-lite-s", num_classes=5, width=0.25, depth=0.25, channels=16, repeats=1)
    m = m.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    train_out = m.train()(x)
    assert train_out.shape == (2, 5, 64, 64) and not train_out.is_contiguous()
    assert train_out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        small = m.forward_logits(x)
        m.eval()
        eval_out = m(x)
        m.train()
    assert eval_out.is_contiguous()  # inference keeps NCHW logits
    # the same interpolation of the same stride-4 logits (train mode: batch statistics) as torch's NCHW kernel
    ref = nn.functional.interpolate(small.float().contiguous(), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(train_out.detach(), ref)


def test_warmup_cosine_schedule():
    assert warmup_cosine_factor(0, 100, 10, 0.001) == pytest.approx(0.001)
    assert warmup_cosine_factor(5, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine_factor(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = WarmupCosine(opt, 100, 10)
    for _ in range(30):
        opt.step()
        sched.step()
    sd = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = WarmupCosine(opt2, 100, 10)
    opt2.load_state_dict(opt.state_dict())  # the optimizer carries the current lr, the scheduler its position
    sched2.load_state_dict(sd)
    opt2.step()
    sched2.step()
    sched.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * warmup_cosine_factor(31, 100, 10))


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_atomic_and_weights_only(tmp_path):
    model = build_model("lite-s", 3, **TINY)
    path = save_checkpoint({"model": model.state_dict(), "model_config": model.config, "step": 3}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    rebuilt, ck = load_model(path)
    assert ck["step"] == 3
    for (k, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), k
    # arbitrary pickled objects are refused (weights_only=True)
    torch.save({"model": {}, "evil": Toy(1)}, tmp_path / "evil.pt")
    with pytest.raises(EsegError, match="could not be read"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(EsegError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


# ---------------------------------------------------------------- the loop

def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("lite-s", 3, **TINY)


def test_train_writes_run_folder_and_learns(tmp_path):
    s = train(tiny_cfg(steps=20, eval_interval=10, checkpoint_interval=10, lr=5e-3, ema_decay=None),
              tmp_path / "run", model=_model(), train_dataset=Toy(8), val_dataset=Toy(4, seed=1))
    run = tmp_path / "run"
    for name in ["config.yaml", "log.jsonl", "val.jsonl", "summary.json", "checkpoints/last.pt",
                 "checkpoints/best.pt"]:
        assert (run / name).is_file(), name
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, 21, 2))
    assert set(rows[0]) >= {"loss", "lr", "images_per_s", "memory_mb"}
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert s["best_mIoU"] == max(h["mIoU"] for h in s["history"]) and s["best_mIoU"] > 0
    assert s["checkpoint"].endswith("best.pt") and s["finished"]
    assert load_checkpoint(s["checkpoint"])["step"] == s["best_step"]


def test_resume_matches_uninterrupted(tmp_path):
    cfg = tiny_cfg()
    full = tmp_path / "full"
    train(cfg, full, model=_model(), train_dataset=Toy(6), val_dataset=Toy(2, 1))
    part = tmp_path / "part"
    s1 = train(cfg, part, model=_model(), train_dataset=Toy(6), val_dataset=Toy(2, 1),
               stop_after=3)  # "killed" after step 3 (mid-epoch: 3 batches per epoch of 6 images)
    assert s1["steps"] == 3 and not s1["finished"]
    s2 = train({}, part, resume=True, model=_model(seed=123), train_dataset=Toy(6), val_dataset=Toy(2, 1))
    assert s2["steps"] == 6 and s2["finished"]
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(part / "checkpoints" / "last.pt")
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, rtol=1e-5, atol=1e-6, msg=f"{key}.{k}")
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, st in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][i]["exp_avg"], st["exp_avg"], rtol=1e-5, atol=1e-6)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    rows = (part / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [2, 3, 4, 6]  # stop logs its step; resume continues


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(EsegError, match="no checkpoints/last.pt"):
        train({}, tmp_path, resume=True)


class _NaNAfter(nn.Module):
    """A model whose output turns NaN from the ``n``-th forward pass on."""

    def __init__(self, n):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.n, self.calls = n, 0
        self.config = {}

    def forward(self, x):
        self.calls += 1
        out = self.conv(x)
        return out * math.nan if self.calls >= self.n else out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(EsegError, match="loss became nan at step 5") as e:
        train(tiny_cfg(steps=10, checkpoint_interval=2, eval_interval=100, loss="ce", ema_decay=None),
              tmp_path, model=_NaNAfter(5), train_dataset=Toy(4), val_dataset=None)
    assert "last.pt" in str(e.value)
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_plain_dict_config_is_recipe_overrides():
    from eseg_cli.engine.config import as_config

    cfg = as_config({"steps": 7})
    base = load_config("synthetic", "lite-s")
    assert cfg.steps == 7 and cfg.crop_size == base.crop_size and cfg.lr == base.lr
    assert as_config({"dataset": "cityscapes", "scale": "S"}).crop_size == [512, 1024]
    with pytest.raises(EsegError, match="'stepz'"):
        as_config({"stepz": 7})


def test_resume_refuses_conflicting_flags(tmp_path):
    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--lr", "0.1", "--steps", "5"])
    assert r.exit_code == 2 and "--lr" in r.output and "--steps" not in r.output.split("drop")[1].split("(")[0]


def test_bf16_autocast_and_sgd_run(tmp_path):
    s = train(tiny_cfg(steps=2, amp="bf16", optimizer="sgd", lr=0.01, eval_interval=2, ema_decay=None), tmp_path,
              model=_model(), train_dataset=Toy(4), val_dataset=Toy(2, 1))
    assert s["finished"] and s["best_mIoU"] is not None
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert all(v.dtype != torch.bfloat16 for v in ck["model"].values())  # weights stay float32 under autocast
    with pytest.raises(EsegError, match="fp16 needs CUDA"):
        train(tiny_cfg(amp="fp16", device="cpu"), tmp_path / "fp16", model=_model(), train_dataset=Toy(4))


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_mirror_the_jsonl_logs_across_a_resume(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install -e '.[dev]')")
    run = tmp_path / "run"
    train(tiny_cfg(tensorboard=True), run, model=_model(), train_dataset=Toy(6), val_dataset=Toy(2, 1), stop_after=3)
    train({}, run, resume=True, model=_model(), train_dataset=Toy(6), val_dataset=Toy(2, 1))
    sc = _scalars(run / "tensorboard")
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (run / "val.jsonl").read_text().splitlines()]
    assert [s for s, _ in sc["train/loss"]] == [r["step"] for r in log] == [2, 3, 4, 6]  # 3: the stop
    for (_, v), r in zip(sc["train/loss"], log):
        assert v == pytest.approx(r["loss"], rel=1e-6)
    assert [s for s, _ in sc["train/lr"]] == [2, 3, 4, 6]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in sc["val/mIoU"]] == [(r["step"], r["mIoU"]) for r in val]


def test_tensorboard_missing_is_refused_before_a_run_folder_is_made(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tb(name, *a, **k):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(EsegError, match=r"pip install 'eseg\[tensorboard\]'"):
        train(tiny_cfg(tensorboard=True), tmp_path / "run", model=_model(), train_dataset=Toy(6))
    assert not (tmp_path / "run").exists()


def test_a_run_saved_before_a_setting_existed_still_resumes(tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(), run, model=_model(), train_dataset=Toy(6), val_dataset=Toy(2, 1), stop_after=3)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    del ck["config"]["tensorboard"]  # as an older eseg wrote it
    torch.save(ck, run / "checkpoints" / "last.pt")
    s = train({}, run, resume=True, model=_model(), train_dataset=Toy(6), val_dataset=Toy(2, 1))
    assert s["finished"] and s["steps"] == 6


def test_seeded_samples_draw_the_same_randomness_and_leave_the_global_generators_alone():
    """Per-sample seeding (SeededDataset): a transform drawing from torch's, numpy's or Python's global generator
    gets the same numbers for the same (seed, epoch, index), other ones elsewhere, and the caller's streams go on
    as if nothing had been drawn."""
    import random

    import numpy as np

    from eseg_cli.engine.sampling import SeededDataset

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2).tolist() + [float(np.random.rand()), random.random()]

    ds = SeededDataset(Draws(), seed=3)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(1).item(), float(np.random.rand()), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    first = [ds[i] for i in range(4)]
    assert (torch.rand(1).item(), float(np.random.rand()), random.random()) == expected
    assert [ds[i] for i in range(4)] == first and len({tuple(f) for f in first}) == 4
    ds.epoch = 1
    assert all(ds[i] != first[i] for i in range(4))
