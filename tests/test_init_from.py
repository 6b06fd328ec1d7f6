"""``--init-from``: tensors matched by name and shape, the classifier re-initialised for another class count,
the report in the run folder, a frozen encoder and its learning-rate multiplier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from eseg_cli import build_model
from eseg_cli.cli import app
from eseg_cli.engine.config import load_config
from eseg_cli.engine.initialize import init_from_checkpoint
from eseg_cli.engine.schedule import WarmupCosine
from eseg_cli.engine.trainer import build_optimizer
from eseg_cli.errors import EsegError

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(width=0.25, depth=0.25, channels=16, repeats=1)


def test_matching_tensors_load_and_the_classifier_is_reinitialised():
    torch.manual_seed(0)
    src = build_model("lite-s", num_classes=19, **TINY)
    torch.manual_seed(1)
    dst = build_model("lite-s", num_classes=3, **TINY)
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    rep = init_from_checkpoint(dst, {"model": src.state_dict(), "model_config": src.config}, "src.pt")
    changed = {k for k, _, _ in rep.reinitialised}
    assert changed == {"head.classifier.1.weight", "head.classifier.1.bias"}
    for k, v in dst.state_dict().items():
        want = fresh[k] if k in changed else src.state_dict()[k]
        assert torch.equal(v, want), k
    assert len(rep.loaded) == len(fresh) - 2 and not rep.not_in_source
    assert ("head.classifier", "re-initialised (shape differs)", 2) in rep.rows()
    assert "re-initialised" in rep.table() and rep.to_dict()["reinitialised"][0]["model_shape"][0] == 3


def test_nothing_matching_or_another_encoder_variant_is_refused():
    dst = build_model("lite-s", num_classes=3, **TINY)
    with pytest.raises(EsegError, match="no tensor"):
        init_from_checkpoint(dst, {"model": {"x.weight": torch.zeros(1)}, "model_config": {}}, "other.pt")
    tf = build_model("lite-s", num_classes=3, encoder_variant="tf", **TINY)
    with pytest.raises(EsegError, match="tf-variant encoder"):
        init_from_checkpoint(dst, {"model": tf.state_dict(), "model_config": tf.config}, "tf.pt")


def test_frozen_encoder_and_its_lr_multiplier():
    model = build_model("lite-s", num_classes=3, **TINY)
    cfg = load_config(overrides={"lr": 0.1, "warmup_steps": 0, "steps": 10, "freeze_encoder_steps": 3,
                                 "encoder_lr_mult": 0.5, "optimizer": "adamw"})
    opt = build_optimizer(cfg, model)
    enc = {id(p) for p in model.encoder.parameters()}
    assert all((id(p) in enc) == g["encoder"] for g in opt.param_groups for p in g["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = WarmupCosine(opt, cfg.steps, 0, frozen_steps=[3 if g["encoder"] else 0 for g in opt.param_groups])
    for step in range(5):
        lrs = {g["encoder"]: g["lr"] for g in opt.param_groups}
        factor = 0.5 * (1 + np.cos(np.pi * step / 10))
        assert lrs[False] == pytest.approx(0.1 * factor)
        assert lrs[True] == pytest.approx(0.0 if step < 3 else 0.05 * factor)
        opt.step()
        sched.step()


def _folder(root, n=2, num_classes=3, size=(64, 128)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            mask = rng.integers(0, num_classes, size, dtype=np.uint8)
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("road\ncar\nsky\n")
    return root


def test_cli_init_from_another_class_count_with_a_frozen_encoder(tmp_path, monkeypatch):
    from eseg_cli.data import synthetic
    from eseg_cli.inference import runtime as checkpoint

    syn = tmp_path / "syn"
    synthetic.generate(syn, num_train=2, num_val=1, size=(64, 128), seed=0)
    common = ["--steps", "2", "--batch-size", "2", "--crop", "64x64", "--workers", "0", "--eval-interval", "2",
              "--no-progress", "--set", "ohem_min_kept=100"]
    src = tmp_path / "src"
    r = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--data-root", str(syn), "--run-dir", str(src),
                                 "--set", f"model={TINY}", "--set", "ema_decay=null", *common])
    assert r.exit_code == 0, r.output
    dst = tmp_path / "dst"
    reads, load = [], checkpoint.load_checkpoint

    def counted(path, *a, **k):
        reads.append(str(path))
        return load(path, *a, **k)

    monkeypatch.setattr(checkpoint, "load_checkpoint", counted)
    r = CliRunner().invoke(app, ["train", "--dataset", "folder", "--data-root", str(_folder(tmp_path / "three")),
                                 "--run-dir", str(dst), "--init-from", str(src), "--freeze-encoder", "2",
                                 "--encoder-lr-mult", "0.1", *common])
    assert r.exit_code == 0, r.output
    assert "re-initialised" in r.output
    assert reads.count(str(src)) == 1  # --init-from is read once: its scale and its weights come from that read
    report = json.loads((dst / "init_from.json").read_text())
    assert {x["tensor"] for x in report["reinitialised"]} == {"head.classifier.1.weight", "head.classifier.1.bias"}
    assert (dst / "init_from.txt").is_file()
    saved = yaml.safe_load((dst / "config.yaml").read_text())
    assert saved["init_from"] == str(src) and saved["freeze_encoder_steps"] == 2 and saved["scale"] == "eseg-lite-s"
    a = torch.load(src / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(dst / "checkpoints" / "last.pt", weights_only=True)
    assert b["model_config"]["width"] == TINY["width"] and b["num_classes"] == 3  # the source's architecture
    params = {n for n, _ in build_model("lite-s", num_classes=3, **TINY).named_parameters()}
    for k in params:
        if k.startswith("encoder."):  # frozen for both steps: unchanged
            assert torch.equal(a["model"][k], b["model"][k]), k
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in params if k.startswith("decoder."))
