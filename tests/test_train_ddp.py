"""DDP: a 2-process gloo run matches one process on the combined batch (model without BatchNorm)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from eseg_cli.engine import train
from eseg_cli.inference.runtime import load_checkpoint


class Toy(Dataset):
    num_classes, ignore_index, classes = 3, 255, ["a", "b", "c"]

    def __init__(self, n=8, size=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
        self.config = {}

    def forward(self, x):
        return self.net(x)


def _cfg(batch_size):
    # plain CE over equal-size, ignore-free batches: the mean of the two ranks' means is the global mean
    return dict(batch_size=batch_size, steps=5, warmup_steps=1, optimizer="sgd", lr=0.5, momentum=0.9,
                weight_decay=1e-3, loss="ce", workers=0, log_interval=1, eval_interval=100, checkpoint_interval=5,
                device="cpu", amp="none")  # float32 stated: the synthetic recipe's amp auto is bf16 on some CPUs


def _worker(rank, world, port, run_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train(_cfg(2), run_dir, model=NoBN(), train_dataset=Toy(), val_dataset=Toy(4))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_matches_single_process(tmp_path, monkeypatch):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    torch.manual_seed(0)
    train(_cfg(4), tmp_path / "single", model=NoBN(), train_dataset=Toy(), val_dataset=Toy(4))
    a = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 5
    moved = False
    torch.manual_seed(0)
    init = NoBN().state_dict()
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved |= not torch.allclose(v, init[k])
    assert moved  # training changed the weights, so the comparison means something
    # the validation confusion matrix was reduced across ranks: both runs saw all 4 val images
    # (best.pt: last.pt of the final step is written before that step's validation)
    a, b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "best.pt"), load_checkpoint(tmp_path / "single")
    assert a["best_mIoU"] == pytest.approx(b["best_mIoU"], abs=1e-6) and a["best_mIoU"] >= 0


def test_torchrun_with_one_process_joins_a_process_group(monkeypatch):
    """``torchrun --nproc_per_node=1`` is DDP on one device (SyncBN on a GPU), not a plain single run."""
    from eseg_cli.engine import distributed

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    rt = distributed.setup("cpu")
    try:
        assert rt.distributed and rt.backend == "gloo" and rt.world_size == 1 and rt.owns_group
    finally:
        distributed.cleanup(rt)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    alone = distributed.setup("cpu")
    assert not alone.distributed and alone.backend is None
