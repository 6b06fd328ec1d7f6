"""Checkpoints: written atomically (read by :mod:`eseg_cli.inference.runtime`, ``weights_only=True``).

A checkpoint is a dict of tensors and plain Python values: ``model`` (state dict), ``model_config``
(``Segmentor.config``, enough to rebuild the model), ``config`` (the training config), ``step``, and for
resuming ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``sampler`` and ``rng``.
"""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from eseg_cli.utils import atomic_write_bytes


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Serialise ``state`` to memory, then write it through a temporary file and a rename."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors / plain values (weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        _set_cuda_rng_states(list(state["cuda"]))


def _set_cuda_rng_states(saved: list) -> None:
    """Restore the CUDA generators that exist here (a checkpoint from a machine with more visible GPUs has
    states for devices this one does not have; those are left out, with one warning)."""
    n = torch.cuda.device_count()
    for i, s in enumerate(saved[:n]):
        torch.cuda.set_rng_state(s, i)
    if len(saved) > n:
        warnings.warn(f"the checkpoint holds CUDA RNG states of {len(saved)} devices but {n} are visible; "
                      f"restored the first {n}, so random draws on the others are not reproduced", stacklevel=3)
