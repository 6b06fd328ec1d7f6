"""Where a run's weights start from: pretrained encoder weights (which also fix the input normalisation), or
another run's checkpoint (``init_from``: every tensor whose name and shape match)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from eseg_cli.engine.config import TrainConfig
from eseg_cli.errors import EsegError
from eseg_cli.inference import runtime
from eseg_cli.models.pretrained import EncoderWeights, model_normalization, read_encoder_weights


def encoder_start(cfg: TrainConfig, model: nn.Module | None = None, state: dict | None = None,
                  init: dict | None = None) -> tuple[EncoderWeights | None, tuple[tuple, tuple]]:
    """The pretrained encoder weights of ``cfg`` (read once, or None) and the input normalisation
    ``(mean, std)`` the run uses: a given ``model``'s, a resumed checkpoint's, the recipe's ``model.mean``/
    ``model.std``, the ``init`` checkpoint's, the weights', or ImageNet's, in that order."""
    if model is not None:
        return None, model_normalization(getattr(model, "config", None))
    if state is not None:
        return None, model_normalization(state.get("model_config"))
    if init is not None:
        if cfg.pretrained:
            raise EsegError("give either pretrained (encoder weights) or init_from (a whole checkpoint), not both")
        return None, model_normalization({**(init.get("model_config") or {}), **cfg.model})
    weights = None
    if cfg.pretrained:
        weights = read_encoder_weights(cfg.pretrained, cfg.model.get("encoder_variant"))
    if cfg.model.get("mean") and cfg.model.get("std"):
        return weights, model_normalization(cfg.model)
    if weights is not None:
        return weights, (weights.mean, weights.std)
    return None, model_normalization(None)


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` loaded into a model, grouped by module."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, source shape, model shape)
    not_in_source: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # in the source, not in the model

    def rows(self) -> list[tuple[str, str, int]]:
        """``(module, status, tensors)``; the module is a name's first two parts (``encoder.blocks``)."""
        out: dict[tuple[str, str], int] = {}
        groups = (("loaded", self.loaded), ("re-initialised (shape differs)", [r[0] for r in self.reinitialised]),
                  ("not in source", self.not_in_source), ("in source only", self.unused))
        for status, keys in groups:
            for k in keys:
                key = (".".join(k.split(".")[:2]), status)
                out[key] = out.get(key, 0) + 1
        return [(g, s, n) for (g, s), n in out.items()]

    def table(self) -> str:
        lines = [f"initialised from {self.source}", f"{'module':<24} {'status':<31} tensors"]
        lines += [f"{g:<24} {s:<31} {n}" for g, s, n in self.rows()]
        lines.append(f"{len(self.loaded)} tensors loaded, {len(self.reinitialised)} re-initialised, "
                     f"{len(self.not_in_source)} not in the source, {len(self.unused)} unused")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"source": self.source, "loaded": len(self.loaded),
                "reinitialised": [{"tensor": k, "source_shape": list(a), "model_shape": list(b)}
                                  for k, a, b in self.reinitialised],
                "not_in_source": self.not_in_source, "unused": self.unused,
                "rows": [{"module": g, "status": s, "tensors": n} for g, s, n in self.rows()]}


def read_init_source(source: str | Path) -> dict:
    """The checkpoint of ``--init-from``: a run folder (its best.pt) or an eseg checkpoint file."""
    return runtime.load_checkpoint(source)


def init_model_kwargs(cfg: TrainConfig, ckpt: dict) -> dict:
    """Build kwargs for the new model: the source's architecture when the scale is the same (so that names
    and shapes match), always its encoder variant and normalisation; the recipe's ``model`` wins."""
    src = dict(ckpt.get("model_config") or {})
    same = src.pop("name", None) == cfg.scale  # both registered names: a config and a checkpoint store those
    src.pop("num_classes", None)
    keep = src if same else {k: src[k] for k in ("encoder_variant", "mean", "std") if k in src}
    return {**{k: v for k, v in keep.items() if v is not None}, **cfg.model}


def init_from_checkpoint(model: nn.Module, ckpt: dict, source: str, use_ema: bool = True) -> InitReport:
    """Load every tensor of ``ckpt`` whose name and shape match ``model``; the rest keep their fresh values
    (a classifier for another class count is re-initialised). Raises when nothing matches, or when the
    source's encoder is the other padding variant (TF-ported weights never go to the PyTorch encoder)."""
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    src_variant = (ckpt.get("model_config") or {}).get("encoder_variant", "pytorch")
    own_variant = (getattr(model, "config", {}) or {}).get("encoder_variant", "pytorch")
    if src_variant != own_variant:
        raise EsegError(f"{source} has a {src_variant}-variant encoder but the new model's is {own_variant}; "
                        "build the new model with the same encoder_variant")
    own = model.state_dict()
    rep = InitReport(source=str(source))
    merged = dict(own)
    for k, v in own.items():
        if k not in weights:
            rep.not_in_source.append(k)
        elif tuple(weights[k].shape) != tuple(v.shape):
            rep.reinitialised.append((k, tuple(weights[k].shape), tuple(v.shape)))
        else:
            rep.loaded.append(k)
            merged[k] = weights[k]
    rep.unused = sorted(k for k in weights if k not in own)
    if not rep.loaded:
        first = next(iter(own))
        raise EsegError(f"no tensor of {source} matches the new model by name and shape (e.g. {first}); "
                        "initialise from a checkpoint of the same architecture")
    model.load_state_dict(merged)
    return rep
