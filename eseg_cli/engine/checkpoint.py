"""Checkpoints: written atomically, read with ``weights_only=True``.

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

from eseg_cli.engine.run import resolve_checkpoint
from eseg_cli.errors import EsegError
from eseg_cli.utils import atomic_write_bytes


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Serialise ``state`` to memory, then write it through a temporary file and a rename."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
        raise EsegError(f"checkpoint {path} could not be read ({type(e).__name__}: {first}); is it a complete "
                        "eseg checkpoint?") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise EsegError(f"checkpoint {path} has no 'model' entry; is it an eseg checkpoint?")
    return ckpt


def build_from_config(model_config: dict):
    """Rebuild a model from ``Segmentor.config`` (``{"name": ..., **kwargs}``; the name is the registered one)."""
    from eseg_cli.models import create_model

    cfg = dict(model_config)
    name = cfg.pop("name", None)
    if not name:
        raise EsegError("checkpoint's model_config has no 'name'; it cannot rebuild the model")
    return create_model(name, **{k: v for k, v in cfg.items() if v is not None})


def load_model(path: str | Path, map_location: str | torch.device = "cpu", use_ema: bool = True):
    """Rebuild the model from a checkpoint and load its weights (EMA weights when present and ``use_ema``).

    Returns ``(model, checkpoint)``; the model is in eval mode.
    """
    ckpt = load_checkpoint(path, map_location)
    if not ckpt.get("model_config"):
        raise EsegError(f"checkpoint {path} has no model_config; it was not written by eseg train")
    try:
        model = build_from_config(ckpt["model_config"])
    except EsegError as e:
        raise EsegError(f"checkpoint {path}: its model_config cannot build a model ({e})") from None
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    load_weights(model, weights, f"checkpoint {path}")
    model.eval()
    return model, ckpt


def load_weights(model, weights: dict, where: str) -> None:
    """``model.load_state_dict(weights)``; a mismatch (a config that disagrees with the weights) is an
    :class:`EsegError` naming ``where`` and the first differing entries, not a page of tensor names."""
    if not isinstance(weights, dict):
        raise EsegError(f"{where}: the weights are not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in weights and hasattr(weights[k], "shape") and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (first: {shapes[0]})")
        if missing:
            parts.append(f"{len(missing)} weight(s) missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weight(s) (first: {unexpected[0]})")
        raise EsegError(f"{where}: the recorded model config does not match the weights: {'; '.join(parts)}; "
                        "the file was edited or mixed from two runs")
    model.load_state_dict(weights)


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
