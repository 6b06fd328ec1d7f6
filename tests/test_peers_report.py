"""benchmarks/peers.py's comparison sets: a peer's own measured accuracy (benchmarks/peers_accuracy.py) decides
which of its modes are admissible."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from eseg_cli.engine.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402

# e2e median ms per (model, mode): the peer is fastest in int8, next in bf16
TIMES = {("ESeg-Lite-S", "compiled"): 130.0, ("ESeg-Lite-S", "bf16"): 85.0, ("ESeg-Lite-S", "int8"): 70.0,
         ("LRASPP", "compiled"): 240.0, ("LRASPP", "bf16"): 140.0, ("LRASPP", "int8"): 110.0}


def _cells():
    return [{"pair": "Lite-S", "model": model, "mode": mode, "resolution": "64x128", "kind": "e2e",
             "times_ms": [ms, ms + 1, ms + 2], "agreement": None} for (model, mode), ms in TIMES.items()]


def _best(tmp_path, accuracy=None) -> dict:
    args = argparse.Namespace(admissible=["bf16", "int8"], accuracy=accuracy, threads=2, rounds=3, warmup=1,
                              seed=0, malloc="tuned", out=str(tmp_path), name="peers")
    peers.write_report(_cells(), args, [(64, 128)], ["compiled", "bf16", "int8"], date="2026-12-05")
    report = json.loads((tmp_path / "peers.json").read_text())
    return next(b for b in report["best"] if b["set"] == "admissible" and b["kind"] == "e2e")


def test_without_measured_accuracy_every_model_shares_the_admissible_set(tmp_path):
    best = _best(tmp_path)
    assert (best["eseg_mode"], best["peer_mode"]) == ("int8", "int8")
    assert best["ratio"] == round(71.0 / 111.0, 3)


def test_a_peer_whose_int8_loses_accuracy_is_compared_in_its_best_admissible_mode(tmp_path):
    acc = tmp_path / "peers_accuracy.json"
    acc.write_text(json.dumps({"rows": [
        {"model": "LRASPP", "mode": "fp32", "val_mIoU": 50.0},
        {"model": "LRASPP", "mode": "bf16", "val_mIoU": 50.1, "admissible": True},
        {"model": "LRASPP", "mode": "int8", "val_mIoU": 48.0, "admissible": False}]}))
    best = _best(tmp_path, str(acc))
    assert (best["eseg_mode"], best["peer_mode"]) == ("int8", "bf16")
    assert best["ratio"] == round(71.0 / 141.0, 3)
    report = json.loads((tmp_path / "peers.json").read_text())
    assert report["meta"]["admissible_by_model"]["LRASPP"] == ["bf16", "channels_last", "compiled", "eager",
                                                                "folded", "onnxruntime"]
    assert "LRASPP bf16" in (tmp_path / "peers.md").read_text()


def test_post_processing_share_is_taken_against_the_modes_that_post_process_so(tmp_path):
    """ATen's argmaxes against the best of the modes that use them (folded here), compiled ones against the best
    compiled mode (int8)."""
    cells = _cells() + [{"pair": "Lite-S", "model": "ESeg-Lite-S", "mode": "folded", "resolution": "64x128",
                         "kind": "e2e", "times_ms": [200.0, 201.0, 202.0], "agreement": None}]
    cells += [{"pair": "Lite-S", "model": "post-processing (upsample + argmax)", "mode": mode, "resolution": "64x128",
               "kind": "postprocess", "times_ms": [ms] * 3} for mode, ms in (("eager", 20.0), ("compiled", 7.1))]
    args = argparse.Namespace(admissible=["bf16", "int8"], accuracy=None, threads=2, rounds=3, warmup=1, seed=0,
                              malloc="tuned", out=str(tmp_path), name="peers")
    peers.write_report(cells, args, [(64, 128)], ["folded", "compiled", "bf16", "int8"], date="2026-12-05")
    post = {p["mode"]: p["share_of_best_e2e"] for p in json.loads((tmp_path / "peers.json").read_text())["postprocess"]}
    assert post == {"eager": {"mode": "folded", "e2e_ms": 201.0, "share": 0.0995},
                    "compiled": {"mode": "int8", "e2e_ms": 71.0, "share": 0.1}}
    assert "| 64x128 | compiled | 7.10 | 10.0% of 71.0 ms (int8) |" in (tmp_path / "peers.md").read_text()


def test_an_eseg_run_s_own_accuracy_decides_its_admissible_modes(tmp_path):
    """int8_routes.py's JSON beside peers_accuracy.py's: an ESeg mode whose val mIoU moved more than 0.5 either way
    from fp32 (here int8, +1.2) is not admissible, so its best admissible mode is bf16."""
    peer = tmp_path / "peers_accuracy.json"
    peer.write_text(json.dumps({"rows": [{"model": "LRASPP", "mode": "int8", "val_mIoU": 49.9, "admissible": True}]}))
    routes = tmp_path / "int8_routes.json"
    routes.write_text(json.dumps({"meta": {"model": "eseg-lite-s"}, "targets": {}, "rows": [
        {"route": "eager fp32 (reference)", "val_mIoU": 50.0}, {"route": "compiled bf16", "val_mIoU": 49.6},
        {"route": "int8 pt2e", "val_mIoU": 51.2}, {"route": "ort fp32", "val_mIoU": 50.0}]}))
    assert peers.peer_accuracy(f"{peer},{routes}") == {"LRASPP": {"int8": True},
                                                        "ESeg-Lite-S": {"bf16": True, "int8": False}}
    best = _best(tmp_path, f"{peer},{routes}")
    assert (best["eseg_mode"], best["peer_mode"]) == ("bf16", "int8")
    assert best["ratio"] == round(86.0 / 111.0, 3)
    # --bf16-head coarse-to-fine: ESeg's bf16 accuracy is the coarse-to-fine route's, which must be there
    with pytest.raises(SystemExit, match="run int8_routes.py with --heads"):
        peers.peer_accuracy(str(routes), "coarse-to-fine")
    data = json.loads(routes.read_text())
    data["rows"].append({"route": "compiled bf16, coarse-to-fine head", "val_mIoU": 50.7})
    routes.write_text(json.dumps(data))
    assert peers.peer_accuracy(str(routes), "coarse-to-fine") == {"ESeg-Lite-S": {"bf16": False, "int8": False}}
    assert peers.peer_accuracy(str(routes)) == {"ESeg-Lite-S": {"bf16": True, "int8": False}}


def test_rewrite_gives_back_the_same_comparison(tmp_path, monkeypatch):
    """``--rewrite`` rebuilds the report from a run's JSON with that run's accuracy file and admissible set."""
    acc = tmp_path / "peers_accuracy.json"
    acc.write_text(json.dumps({"rows": [{"model": "LRASPP", "mode": "int8", "val_mIoU": 48.0, "admissible": False}]}))
    _best(tmp_path, str(acc))
    first = json.loads((tmp_path / "peers.json").read_text())
    again = tmp_path / "again"
    run = tmp_path / "peers_run.json"
    run.write_text((tmp_path / "peers.json").read_text())
    monkeypatch.setattr(sys, "argv", ["peers.py", "--rewrite", str(run), "--out", str(again)])
    peers.main()
    # written under the rewritten file's own name (never over peers.json), with the CPU that ran it named
    assert not (again / "peers.json").exists()
    second = json.loads((again / "peers_run.json").read_text())
    assert second["best"] == first["best"]
    assert second["meta"]["admissible_by_model"] == first["meta"]["admissible_by_model"]
    assert second["meta"]["cpu"] == first["meta"]["cpu"] and first["meta"]["cpu"]["cores"] == os.cpu_count()
    assert f"CPU: {first['meta']['cpu']['name']} ({os.cpu_count()} cores" in (again / "peers_run.md").read_text()


def test_trained_weights_are_refused_without_their_run(tmp_path):
    with pytest.raises(SystemExit, match="peers_accuracy.py"):
        peers.trained("LRASPP-MobileNetV3-L (torchvision)", None, tmp_path)


def test_trained_weights_of_a_peer_come_from_its_trainer_wrapper(tmp_path):
    """eseg's trainer held a peer as ``.model`` of a wrapper: its checkpoint's keys start with ``model.``."""
    def net():
        return peers.LowRes("smp", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))

    source = net()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = tmp_path / peers.TRAINED_RUNS["DeepLabV3+ (EfficientNet-B1, OS16, smp)"] / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint({"model": {f"model.{k}": v for k, v in source.model.state_dict().items()}}, path)
    loaded = peers.trained("DeepLabV3+ (EfficientNet-B1, OS16, smp)", net(), tmp_path)
    for a, b in zip(loaded.model.state_dict().values(), source.model.state_dict().values()):
        assert torch.equal(a, b)


def test_trained_weights_refuse_an_eseg_run_of_another_scale(tmp_path):
    from eseg_cli import build_model

    small = build_model("lite-s", num_classes=3, width=0.25, depth=0.25, channels=16, repeats=1)
    path = tmp_path / peers.TRAINED_RUNS["ESeg-S"] / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint({"model": small.state_dict(), "model_config": small.config}, path)
    with pytest.raises(SystemExit, match="holds eseg-lite-s, not eseg-s"):
        peers.trained("ESeg-S", peers.LowRes("eseg", None), tmp_path)
