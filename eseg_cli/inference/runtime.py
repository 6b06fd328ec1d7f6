"""What running a trained model needs, below training and evaluation: the device, and the model rebuilt from a
checkpoint (a file or a run folder) with its weights, read with ``weights_only=True`` (no code from the file).

A checkpoint is a dict of tensors and plain Python values: ``model`` (state dict), ``model_config``
(``Segmentor.config``, enough to rebuild the model), ``config`` (the training config), ``step``, and for
resuming ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``sampler`` and ``rng``
(:mod:`eseg_cli.engine.checkpoint` writes them).
"""

from __future__ import annotations

from pathlib import Path

import torch

from eseg_cli.errors import EsegError
from eseg_cli.models import create_model
from eseg_cli.run import resolve_checkpoint


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when a GPU is present, else ``cpu``; ``xla`` -> the torch-xla device."""
    name = (name or "auto").lower()
    if name == "xla":
        try:
            import torch_xla
        except ImportError:
            raise EsegError("'device' xla needs torch-xla (pip install torch-xla, matching your torch); "
                            "on a CPU host set PJRT_DEVICE=CPU", field="device") from None
        return torch_xla.device()
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EsegError(f"'device' {name}: no CUDA GPU is visible; use 'device' cpu", field="device")
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise EsegError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or xla")


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
