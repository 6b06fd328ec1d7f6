"""Adding a model is one module plus one import line: a builder registered here, touching no other file of
eseg, is a ``--scale`` of ``eseg train`` (and of ``eseg models``), and trains for 2 steps through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.models import Segmentor, registry

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_segnet(num_classes: int = 19, *, channels: int = 8) -> Segmentor:
    """What a model module holds: a builder returning a Segmentor whose config rebuilds it."""
    encoder = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
                            nn.ReLU(inplace=True))
    return Segmentor(encoder, nn.Identity(), nn.Conv2d(channels, num_classes, 1), num_classes=num_classes,
                     max_level=1, config={"name": "toy-segnet", "num_classes": num_classes, "channels": channels})


@pytest.fixture
def toy_registered(monkeypatch):
    # the registry as it was comes back after the test: the toy is registered into a copy
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    registry.register_model(toy_segnet)  # what `@register_model` does when the module is imported
    return "toy-segnet"


def test_a_registered_toy_model_trains_through_the_cli(toy_registered, tmp_path):
    from eseg_cli.data import synthetic

    syn = tmp_path / "syn"
    synthetic.generate(syn, num_train=2, num_val=1, size=(64, 128), seed=0)
    models = CliRunner().invoke(app, ["models", "--json"])
    assert models.exit_code == 0 and "toy-segnet" in {r["model"] for r in json.loads(models.stdout)}

    run = tmp_path / "run"
    r = CliRunner().invoke(app, [
        "train", "--scale", "Toy_Segnet", "--dataset", "synthetic", "--data-root", str(syn), "--run-dir", str(run),
        "--steps", "2", "--batch-size", "2", "--crop", "64x64", "--workers", "0", "--eval-interval", "2",
        "--no-progress", "--set", "model={channels: 4}", "--set", "ohem_min_kept=100", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["scale"] == "toy-segnet"  # stored canonical
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["model_config"] == {"name": "toy-segnet", "num_classes": 19, "channels": 4}
    assert ckpt["model"]["encoder.0.weight"].shape == (4, 3, 3, 3)

    # its builder's options are checked like every model's: one line naming the option, exit 2
    bad = CliRunner().invoke(app, ["train", "--scale", "toy-segnet", "--steps", "1", "--set", "model={chanels: 4}"])
    assert bad.exit_code == 2 and "did you mean 'channels'" in bad.output


def test_a_name_is_registered_once():
    def eseg_s(num_classes: int = 19):  # another builder under a taken name
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="registered already"):
        registry.register_model(eseg_s)
    assert registry._MODELS["eseg-s"] is not eseg_s
