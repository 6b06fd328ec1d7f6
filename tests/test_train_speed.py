"""The fast training path changes speed, not results: channels_last, the compiled step, fused optimizers,
the preloaded training set; and the start-up line names the CPU's bf16 support."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toydata import Toy

from eseg_cli.data import build_dataset, build_transforms
from eseg_cli.data.synthetic import generate
from eseg_cli.engine import train
from eseg_cli.engine.trainer import build_optimizer
from eseg_cli.inference.precision import cpu_bf16_support, precision_note
from eseg_cli.models import build_model

# levels up to P5 only: at 64x64 the top levels would be 1x1, where batch norm over 2 images turns rounding-sized
# differences into different steps (the same model at any layout then follows another trajectory)
TINY = dict(width=0.25, depth=0.3, channels=16, repeats=1, max_level=5)


def tiny_cfg(**kw):
    # no EMA, no clipping: the logged losses are the model's alone. Plain CE and SGD: rounding differences then stay
    # rounding-sized over the steps (OHEM's k-th value selection and Adam's first steps amplify them into jumps)
    cfg = dict(scale="lite-s", model=TINY, batch_size=2, steps=5, warmup_steps=1, log_interval=1, eval_interval=100,
               checkpoint_interval=100, workers=0, optimizer="sgd", lr=0.05, loss="ce", ema_decay=None,
               clip_grad=None, channels_last=False, compile=False, amp="none")
    cfg.update(kw)
    return cfg


def _model():
    torch.manual_seed(0)
    return build_model("lite-s", 3, **TINY)


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def _run(tmp_path, name, **kw):
    summary = train(tiny_cfg(**kw), tmp_path / name, model=_model(), train_dataset=Toy(8), val_dataset=Toy(2, 1))
    return summary, _losses(tmp_path / name)


def test_training_on_cpu_tunes_malloc(tmp_path, monkeypatch):
    """The tuned malloc (inference/allocator.py, tested there) is set by every CPU run, the library's included."""
    from eseg_cli.engine import trainer

    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(True) or True)
    _run(tmp_path, "run", steps=1)
    assert calls == [True]


def test_channels_last_gives_the_same_losses_as_nchw(tmp_path):
    _, nchw = _run(tmp_path, "nchw")
    _, nhwc = _run(tmp_path, "nhwc", channels_last=True)
    assert len(nchw) == 5
    np.testing.assert_allclose(nhwc, nchw, rtol=1e-4, atol=1e-5)


def test_compiled_training_follows_the_eager_loss_curve_and_survives_resume(tmp_path):
    _, eager = _run(tmp_path, "eager", channels_last=True)
    summary, compiled = _run(tmp_path, "compiled", channels_last=True, compile=True)
    assert summary["compile_s"] is not None and summary["compile_s"] > 0  # the first step compiled
    np.testing.assert_allclose(compiled, eager, rtol=1e-3, atol=1e-4)
    assert compiled[-1] != compiled[0]  # it trained: the weights the compiled graph reads are the live ones
    # stopped after 3 steps, resumed with the saved config (compile: true): it compiles again and goes on as before
    part = tmp_path / "part"
    train(tiny_cfg(channels_last=True, compile=True), part, model=_model(), train_dataset=Toy(8),
          val_dataset=Toy(2, 1), stop_after=3)
    resumed = train({}, part, resume=True, model=_model(), train_dataset=Toy(8), val_dataset=Toy(2, 1))
    assert resumed["finished"] and resumed["compile_s"] is not None
    np.testing.assert_allclose(_losses(part), compiled, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_optimizer_step_is_fused_and_matches_the_reference_loop(name):
    cfg = type("Cfg", (), dict(optimizer=name, lr=1e-3, weight_decay=1e-4, momentum=0.9, nesterov=False,
                               encoder_lr_mult=1.0, freeze_encoder_steps=0))()
    fused_model, loop_model = _model(), _model()
    fused = build_optimizer(cfg, fused_model)
    assert fused.defaults.get("fused") is True
    index = {id(p): i for i, p in enumerate(fused_model.parameters())}
    same = list(loop_model.parameters())
    groups = [{"params": [same[index[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
              for g in fused.param_groups]
    loop = (torch.optim.AdamW if name == "adamw" else torch.optim.SGD)(
        groups, lr=1e-3, **({"momentum": 0.9} if name == "sgd" else {}), foreach=False)
    x = torch.randn(2, 3, 64, 64)
    for _ in range(3):
        for m, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):  # (Adam's near-zero gradients: rounding
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)           # moves an update by a fraction of lr)


def test_a_preloaded_training_set_serves_the_same_samples_as_the_files(tmp_path):
    root = tmp_path / "syn"
    generate(root, num_train=4, num_val=0, size=(64, 128), seed=0, workers=0)
    tf = build_transforms(True, crop_size=(48, 48), scale_range=(0.75, 1.25), seed=3)
    from_disk = build_dataset("synthetic", root, "train", transform=tf)
    held = build_dataset("synthetic", root, "train", transform=build_transforms(
        True, crop_size=(48, 48), scale_range=(0.75, 1.25), seed=3))
    assert held.decoded_bytes() == 4 * 64 * 128 * 4
    assert held.preload() == 4 * 64 * 128 * 4
    for i in range(4):
        for a, b in zip(from_disk[i], held[i]):
            torch.testing.assert_close(a, b)
    img, _ = held.load(0)
    img[:] = 0  # a transform writing into what it was given never reaches the held copy
    assert held.load(0)[0].any()


def test_the_trainer_preloads_within_its_budget_and_says_so(tmp_path):
    root = tmp_path / "syn"
    generate(root, num_train=4, num_val=2, size=(64, 128), seed=0, workers=0)
    common = dict(dataset="synthetic", data_root=str(root), crop_size=[48, 48], steps=1, check_data=False)
    events = []
    train(tiny_cfg(**common), tmp_path / "held", on_event=events.append)
    said = [e.message for e in events if e.kind == "message"]
    assert any(m.startswith("Preloaded 4 training images") for m in said), said
    events.clear()
    train(tiny_cfg(**common, preload_mb=0), tmp_path / "disk", on_event=events.append)
    assert not any("Preloaded" in (e.message or "") for e in events if e.kind == "message")


def test_the_start_up_line_names_the_bf16_support_found(tmp_path, monkeypatch):
    found = cpu_bf16_support()
    events = []
    train(tiny_cfg(steps=1), tmp_path / "run", model=_model(), train_dataset=Toy(4), val_dataset=None,
          on_event=events.append)
    lines = [e.message for e in events if e.kind == "message" and e.message.startswith(("CPU:", "Warning: CPU:"))]
    assert len(lines) == 1, [e.message for e in events if e.kind == "message"]
    assert found["capability"] in lines[0]
    assert ("AVX512-BF16" in lines[0]) == (found["avx512_bf16"] or not found["native"])
    # on a CPU without native bf16: what it means, and a warning when bf16 was asked for
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert "without AVX512-BF16 or AMX: training in float32" in precision_note(None, "cpu")
    assert precision_note("bf16", "cpu").startswith("Warning: CPU:") and "emulated" in precision_note("bf16", "cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert "with AMX" in precision_note("bf16", "cpu") and "training in bf16" in precision_note("bf16", "cpu")
    assert precision_note("bf16", "cuda") is None


def test_amp_auto_is_decided_for_the_device_and_recorded(tmp_path, monkeypatch):
    import yaml

    for native, expected in ((True, "bf16"), (False, None)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        run = tmp_path / f"native-{native}"
        train(tiny_cfg(steps=1, amp="auto"), run, model=_model(), train_dataset=Toy(4), val_dataset=None)
        assert yaml.safe_load((run / "config.yaml").read_text())["amp"] == expected
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["config"]["amp"] == expected
