"""Training on several sources: the mixing sampler's ratios, the recipe key and --extra-data."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image
from torch.utils.data import Dataset

from eseg_cli.engine.config import load_config
from eseg_cli.engine.sampling import MixedDataset, MixedSampler
from eseg_cli.errors import EsegError


class Ids(Dataset):
    def __init__(self, n, tag):
        self.n, self.tag = n, tag

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.tag, i


@pytest.mark.parametrize("sizes,ratios", [([10, 40], [0.2, 0.8]), ([30, 7], [0.5, 0.5]),
                                          ([12, 5, 9], [0.4, 0.35, 0.25])])
def test_mixing_sampler_draws_each_source_at_its_ratio(sizes, ratios):
    mixed = MixedDataset([Ids(n, k) for k, n in enumerate(sizes)])
    sampler = MixedSampler(mixed, ratios, seed=3, batch_size=1)
    for epoch in range(3):
        sampler.set_position(epoch)
        picks = [mixed[i][0] for i in sampler]
        assert len(picks) == sampler.epoch_length == round(sizes[0] / ratios[0])
        for k, r in enumerate(ratios):
            assert picks.count(k) / len(picks) == pytest.approx(r, abs=1 / len(picks))
        main = sorted(mixed[i][1] for i in sampler if mixed[i][0] == 0)
        assert main == list(range(sizes[0]))  # the main set exactly once per epoch
    # over many draws the shares converge to the stated ratios
    big = MixedSampler(MixedDataset([Ids(n, k) for k, n in enumerate(sizes)]), ratios, seed=0)
    counts = np.bincount([mixed.source_of(i) for e in range(20) for i in big.epoch_indices(e)], minlength=len(sizes))
    np.testing.assert_allclose(counts / counts.sum(), ratios, atol=0.02)


def test_mixing_sampler_resumes_and_splits_over_processes():
    mixed = MixedDataset([Ids(16, 0), Ids(5, 1)])
    full = MixedSampler(mixed, [0.5, 0.5], seed=1, batch_size=2)
    full.set_position(2)
    order = list(full)
    full.set_position(2, start_batch=3)
    assert list(full) == order[6:]
    ranks = [MixedSampler(mixed, [0.5, 0.5], num_replicas=2, rank=r, seed=1, batch_size=2) for r in range(2)]
    for s in ranks:
        s.set_position(2)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(order)
    assert not set(ranks[0]) - set(order)


def test_extra_data_config_is_checked():
    cfg = load_config(overrides={"extra_data": [{"root": "pl"}, {"dataset": "synthetic", "root": "x", "ratio": 0.25}]})
    assert cfg.extra_data[0] == {"dataset": "folder", "root": "pl", "ratio": 0.5, "split": "train"}  # base.yaml's
    assert load_config(overrides={"extra_data": [{"root": "pl"}], "extra_ratio": 0.3}).extra_data[0]["ratio"] == 0.3
    for bad, msg in [([{"root": "a", "ratio": 1.5}], "ratio"), ([{"ratio": 0.5}], "root"),
                     ([{"root": "a", "ratio": 0.6}, {"root": "b", "ratio": 0.5}], "add up"),
                     ([{"root": "a", "dataset": "imagenet"}], "dataset"), ([{"root": "a", "rate": 0.1}], "unknown")]:
        with pytest.raises(EsegError, match=msg):
            load_config(overrides={"extra_data": bad})


def _folder(root, n, num_classes=19, size=(64, 128), seed=0, reverse=False):
    rng = np.random.default_rng(seed)
    for sub in ("images/train", "masks/train"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images/train" / f"p{i}.png")
        m = rng.integers(0, num_classes, size, dtype=np.uint8)
        m[:8] = 255
        Image.fromarray(m).save(root / "masks/train" / f"p{i}.png")
    from eseg_cli.data.datasets import dataset_class

    names = list(dataset_class("synthetic").classes)  # a mixed source labels the training set's classes
    names = names if num_classes == len(names) else [f"c{k}" for k in range(num_classes)]
    (root / "classes.txt").write_text("\n".join(reversed(names) if reverse else names) + "\n")
    return root


def test_training_mixes_a_folder_source_and_records_it(tmp_path, one_thread):
    from typer.testing import CliRunner

    from eseg_cli.cli import app
    from eseg_cli.data import synthetic

    syn = tmp_path / "syn"
    synthetic.generate(syn, num_train=2, num_val=1, size=(64, 128), seed=0)
    extra = _folder(tmp_path / "pl", 3)
    run = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--data-root", str(syn), "--steps", "2", "--batch-size", "2",
            "--crop", "64x64", "--workers", "0", "--eval-interval", "2", "--no-progress", "--set",
            "model={width: 0.25, depth: 0.25, channels: 16, repeats: 1}", "--set", "ohem_min_kept=100"]
    r = CliRunner().invoke(app, [*args, "--run-dir", str(run), "--extra-data", str(extra), "--extra-ratio", "0.6"])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["extra_data"] == [{"dataset": "folder", "root": str(extra), "ratio": 0.6, "split": "train"}]
    assert "folder:" in r.output and "60% of samples" in r.output
    bad = _folder(tmp_path / "pl5", 2, num_classes=5)
    r = CliRunner().invoke(app, [*args, "--run-dir", str(tmp_path / "r2"), "--extra-data", str(bad)])
    assert r.exit_code == 2 and "5 classes" in r.output
    shuffled = _folder(tmp_path / "pl_reversed", 2, reverse=True)  # the same classes in another order
    r = CliRunner().invoke(app, [*args, "--run-dir", str(tmp_path / "r3"), "--extra-data", str(shuffled)])
    assert r.exit_code == 2 and "another order" in r.output and "pl_reversed" in r.output, r.output
