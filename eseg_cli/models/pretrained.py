"""Pretrained encoder weights: read the common EfficientNet checkpoint formats, detect which one a file
is, and load it into an eseg encoder with a report of what was loaded.

Formats (all read locally; nothing is ever downloaded):

- timm PyTorch weights (``efficientnet_b*``, ``efficientnet_lite*``): ``conv_stem``, ``blocks.S.I.conv_dw`` ...
- timm TensorFlow ports (``tf_efficientnet_*``): the same names, but the network they compute is a
  different one: TF's SAME padding (asymmetric on stride-2 convolutions) and BatchNorm eps 1e-3. They
  need timm's TF variant of the encoder (:func:`~eseg_cli.models.encoders.efficientnet_encoder` with
  ``variant="tf"``); loading them into the PyTorch-padding encoder is refused.
- efficientnet_pytorch names (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...): that package's weights
  are TF ports too, so they are converted to timm names and go to the TF variant.
- ``.pth`` / ``.pt`` / ``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors`` files, a whole
  eseg checkpoint (its encoder part), and a local Hugging Face cache folder of a timm model
  (``models--timm--NAME`` or one of its ``snapshots/<hash>`` folders, with ``config.json``).

Whether timm-named weights are PyTorch weights or TF ports cannot be read from the tensors: it comes from
the checkpoint's metadata (timm's ``arch``, a Hugging Face ``config.json``, an eseg ``model_config``) or
from the file or folder name (``tf_efficientnet_b7_ns-1dbc32de.pth``, ``models--timm--efficientnet_b1...``).
When none of these tells, loading stops and asks for ``encoder_variant``.

The normalisation the weights were trained with travels with them (:attr:`EncoderWeights.mean`/``std``):
ImageNet's mean/std, or 0.5/0.5 for TF-ported Lite and AdvProp weights, or what ``config.json`` says.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import Conv2dSame
from torch import nn

from eseg_cli.errors import EsegError

VARIANTS = ("pytorch", "tf")
IMAGENET_NORM = (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
HALF_NORM = (tuple(IMAGENET_INCEPTION_MEAN), tuple(IMAGENET_INCEPTION_STD))  # (x/255 - 0.5) / 0.5

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")
# a timm model name in a file or folder name: "tf_efficientnet_b7_ns-1dbc32de.pth", "efficientnet_b1.ra4..."
_ARCH_IN_NAME = re.compile(r"(?<![a-z0-9])(tf_)?efficientnet[a-z0-9_.-]*")

# efficientnet_pytorch block parts -> timm names (IR block with an expansion conv, DS block without one)
_EP_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EP_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
          "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


@dataclass
class EncoderWeights:
    """Encoder weights read from a local source, in timm's names, with what is known about them."""

    state: dict[str, torch.Tensor]
    source: str
    format: str  # "timm" | "efficientnet_pytorch" | "eseg"
    variant: str  # "pytorch" | "tf"
    evidence: str  # why this variant
    arch: str | None = None  # the timm model name when the source names it
    mean: tuple[float, ...] = IMAGENET_NORM[0]
    std: tuple[float, ...] = IMAGENET_NORM[1]

    @property
    def lite(self) -> bool:
        """EfficientNet-Lite (and ESeg-Lite) weights have no squeeze-and-excitation."""
        return not any(".se." in k for k in self.state)


@dataclass
class LoadReport:
    """What :func:`load_encoder_weights` did: loaded tensors, and file tensors the encoder has no place for."""

    source: str
    format: str
    variant: str
    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = IMAGENET_NORM[0]
    std: tuple[float, ...] = IMAGENET_NORM[1]

    def rows(self) -> list[tuple[str, str, int]]:
        """``(module, "loaded" | "not used", tensors)`` grouped by module (``conv_stem``, ``blocks.3`` ...)."""
        out: dict[tuple[str, str], int] = {}
        for status, keys in (("loaded", self.loaded), ("not used", self.unused)):
            for k in keys:
                parts = k.split(".")
                group = ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]
                out[(group, status)] = out.get((group, status), 0) + 1
        return [(g, s, n) for (g, s), n in out.items()]

    def table(self) -> str:
        """A plain-text table of :meth:`rows` with a header line naming the source."""
        lines = [f"encoder weights: {self.source} ({self.format}, {self.variant} variant, "
                 f"normalisation mean {list(self.mean)} std {list(self.std)})",
                 f"{'module':<16} {'status':<9} tensors"]
        lines += [f"{g:<16} {s:<9} {n}" for g, s, n in self.rows()]
        lines.append(f"{len(self.loaded)} tensors loaded, {len(self.unused)} not used")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"source": self.source, "format": self.format, "variant": self.variant, "mean": list(self.mean),
                "std": list(self.std), "loaded": len(self.loaded), "not_used": self.unused,
                "rows": [{"module": g, "status": s, "tensors": n} for g, s, n in self.rows()]}


# ---------------------------------------------------------------------------------------------- reading


def _torch_load(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch (torch.save)"
        raise EsegError(f"could not read pretrained weights {path}: not a readable {kind} weights file "
                        f"({type(e).__name__}: {e}); give an ImageNet encoder's weights file (timm, TF-port or "
                        "efficientnet_pytorch names)", field="pretrained") from None


def _hf_snapshot(folder: Path) -> Path | None:
    """The snapshot folder of a Hugging Face cache folder ``models--ORG--NAME`` (``refs/main`` first)."""
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        return None
    ref = folder / "refs" / "main"
    if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
        return snaps / ref.read_text().strip()
    cands = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return cands[-1] if cands else None


def _resolve_source(path: Path) -> tuple[Path, dict]:
    """A weights file, and a Hugging Face ``config.json`` (as a dict) when the source is such a folder."""
    if path.is_dir():
        folder = _hf_snapshot(path) or path
        weights = next((folder / n for n in _WEIGHT_FILES if (folder / n).is_file()), None)
        if weights is None:
            raise EsegError(f"pretrained weights folder {path} holds none of {', '.join(_WEIGHT_FILES)}; give a "
                            "Hugging Face cache folder of a timm model (models--timm--NAME) or a weights file")
        hf = {}
        if (folder / "config.json").is_file():
            try:
                hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise EsegError(f"{folder / 'config.json'} is not valid JSON: {e}") from None
        return weights, hf if isinstance(hf, dict) else {}
    if not path.is_file():
        raise EsegError(f"pretrained weights file {path} does not exist; pass a local .pth/.pt/.safetensors "
                        "file or a Hugging Face cache folder (nothing is downloaded)")
    return path, {}


def _arch_from_name(path: Path) -> str | None:
    """The timm model name in the file name or in a Hugging Face cache folder name (``models--timm--NAME``)."""
    names = [path.name] + [p.name[len("models--timm--"):] for p in [path, *path.parents][:4]
                           if p.name.startswith("models--timm--")]
    for name in names:
        m = _ARCH_IN_NAME.search(name.lower())
        if m:
            return re.sub(r"\.(pth|pt|bin|safetensors)$", "", m.group(0))
    return None


def _from_efficientnet_pytorch(state: dict) -> dict:
    """efficientnet_pytorch names -> timm names.

    efficientnet_pytorch numbers blocks 0..N-1; timm nests them by stage. A block starts a new stage when
    its output width, kernel size or type (with/without expansion) differs from the block before it:
    within a stage every block after the first repeats the same shape.
    """
    out, n_blocks = {}, 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    stage, idx, prev, where = 0, -1, None, {}
    for n in range(n_blocks):
        proj, dw = state.get(f"_blocks.{n}._project_conv.weight"), state.get(f"_blocks.{n}._depthwise_conv.weight")
        if proj is None or dw is None:
            raise EsegError(f"efficientnet_pytorch weights: block {n} has no _project_conv/_depthwise_conv weight")
        shape = (proj.shape[0], tuple(dw.shape[-2:]), f"_blocks.{n}._expand_conv.weight" in state)
        if prev is not None and shape != prev:
            stage, idx = stage + 1, 0
        else:
            idx += 1
        where[n], prev = (stage, idx), shape
    for k, v in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", k)
        if m:
            n, part, param = int(m.group(1)), m.group(2), m.group(3)
            table = _EP_IR if f"_blocks.{n}._expand_conv.weight" in state else _EP_DS
            if part not in table:
                raise EsegError(f"efficientnet_pytorch weights: unknown tensor {k}")
            s, i = where[n]
            out[f"blocks.{s}.{i}.{table[part]}.{param}"] = v
        else:
            top, _, rest = k.partition(".")
            if top not in _EP_TOP:
                raise EsegError(f"efficientnet_pytorch weights: unknown tensor {k}")
            out[f"{_EP_TOP[top]}.{rest}"] = v
    return out


def _norm_for(variant: str, arch: str | None, lite: bool, hf: dict) -> tuple[tuple, tuple]:
    cfg = hf.get("pretrained_cfg") or {}
    if cfg.get("mean") and cfg.get("std"):
        return tuple(float(x) for x in cfg["mean"]), tuple(float(x) for x in cfg["std"])
    if variant == "tf" and (lite or (arch and re.search(r"[._]ap([._-]|$)", arch))):
        return HALF_NORM  # TF Lite and AdvProp models were trained on (x - 127.5) / 127.5
    return IMAGENET_NORM


def read_encoder_weights(path: str | Path, variant: str | None = None) -> EncoderWeights:
    """Read encoder weights from ``path`` (file or folder) into timm names and detect their variant.

    ``variant`` (``"pytorch"`` or ``"tf"``) is needed only when neither the file's metadata nor its name
    tells; when it contradicts what the source says, that is an error.
    """
    if variant is not None and variant not in VARIANTS:
        raise EsegError(f"encoder_variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    path = Path(path).expanduser()
    file, hf = _resolve_source(path)
    raw = _torch_load(file)
    if not isinstance(raw, dict):
        raise EsegError(f"pretrained weights {file} hold a {type(raw).__name__}, not a state dict")
    meta_arch = hf.get("architecture") or (raw.get("arch") if isinstance(raw.get("arch"), str) else None)
    model_config = raw.get("model_config") if isinstance(raw.get("model_config"), dict) else None
    state = raw
    for key in ("state_dict", "model", "model_ema", "state_dict_ema"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise EsegError(f"pretrained weights {file} hold no tensors")

    fmt, detected, evidence = "timm", None, ""
    if any(k.startswith("encoder.") for k in state):  # a whole eseg model: its encoder part
        fmt = "eseg"
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        detected = (model_config or {}).get("encoder_variant") or "pytorch"
        evidence = "the eseg checkpoint's model_config"
    elif any(k.startswith(("_conv_stem.", "_blocks.")) for k in state):
        fmt = "efficientnet_pytorch"
        state = _from_efficientnet_pytorch(state)
        detected, evidence = "tf", "efficientnet_pytorch weights are TensorFlow ports (SAME padding, BN eps 1e-3)"
    arch = meta_arch or _arch_from_name(path)
    if detected is None and arch:
        detected = "tf" if arch.startswith("tf_") else "pytorch"
        evidence = (f"architecture {arch!r} in {'config.json' if hf.get('architecture') else 'the checkpoint'}"
                    if meta_arch else f"the name {arch!r} in {path}")
    if detected is None:
        if variant is None:
            raise EsegError(
                f"cannot tell whether {path} holds timm PyTorch weights (efficientnet_*) or TensorFlow ports "
                "(tf_efficientnet_*, which need SAME padding): the file has no architecture metadata and its name "
                "does not say. Rename it after its timm model (e.g. tf_efficientnet_b1.pth) or set "
                "encoder_variant to 'pytorch' or 'tf'")
        detected, evidence = variant, "encoder_variant as given"
    elif variant is not None and variant != detected:
        need = "TensorFlow ports need the SAME-padding encoder" if detected == "tf" else "drop the option"
        raise EsegError(f"{path} holds {detected}-variant weights ({evidence}) but encoder_variant is {variant!r}; "
                        f"{need}")
    w = EncoderWeights(state=state, source=str(path), format=fmt, variant=detected, evidence=evidence, arch=arch)
    if fmt == "eseg" and model_config and model_config.get("mean"):
        w.mean, w.std = tuple(model_config["mean"]), tuple(model_config["std"])
    else:
        w.mean, w.std = _norm_for(detected, arch, w.lite, hf)
    return w


# ---------------------------------------------------------------------------------------------- loading


def encoder_variant_of(encoder: nn.Module) -> str:
    """``"tf"`` when the encoder uses TF SAME padding or BatchNorm eps 1e-3, else ``"pytorch"``."""
    for m in encoder.modules():
        if isinstance(m, Conv2dSame) or (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.eps == 1e-3):
            return "tf"
    return "pytorch"


def load_encoder_weights(encoder: nn.Module, weights: str | Path | EncoderWeights,
                         variant: str | None = None) -> LoadReport:
    """Load ``weights`` (a path, or what :func:`read_encoder_weights` returned) into ``encoder``.

    Every encoder tensor must be in the weights with the same shape; tensors the encoder has no place for
    (a classifier head) are reported as not used. TF-ported weights are refused by a PyTorch-padding
    encoder and the other way round. Raises :class:`EsegError` naming the first missing or mismatching tensor.
    """
    w = weights if isinstance(weights, EncoderWeights) else read_encoder_weights(weights, variant)
    own_variant = encoder_variant_of(encoder)
    if w.variant != own_variant:
        raise EsegError(
            f"pretrained weights {w.source} are {w.variant}-variant ({w.evidence}) but the encoder was built as "
            f"the {own_variant} variant; "
            + ("TensorFlow-ported weights compute a different function without TF's SAME padding and BN eps 1e-3: "
               "build the model with encoder_variant='tf' (build_model does this when given the weights)"
               if w.variant == "tf" else "build the model with encoder_variant='pytorch'"))
    own = encoder.state_dict()
    for k, v in own.items():
        if k not in w.state:
            raise EsegError(f"pretrained weights {w.source} do not match this encoder: {k} {tuple(v.shape)} is not "
                            f"in the file ({len([x for x in own if x not in w.state])} of {len(own)} missing). "
                            f"{_hint(w)}")
        if tuple(w.state[k].shape) != tuple(v.shape):
            raise EsegError(f"pretrained weights {w.source} do not match this encoder: first mismatching tensor {k}: "
                            f"file {tuple(w.state[k].shape)}, encoder {tuple(v.shape)}. {_hint(w)}")
    encoder.load_state_dict({k: w.state[k] for k in own}, strict=True)
    return LoadReport(source=w.source, format=w.format, variant=w.variant, loaded=list(own),
                      unused=sorted(k for k in w.state if k not in own), mean=w.mean, std=w.std)


def _hint(w: EncoderWeights) -> str:
    what = f" ({w.arch})" if w.arch else ""
    return (f"The weights{what} must be those of the same backbone: timm's efficientnet_b1 for ESeg-S, b4 for "
            "ESeg-M, b7 for ESeg-L, or encoder=efficientnet_lite0 for EfficientNet-Lite0 weights")


def model_normalization(config: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation ``(mean, std)`` recorded in a model config (ImageNet's when absent)."""
    config = config or {}
    if config.get("mean") and config.get("std"):
        return tuple(float(x) for x in config["mean"]), tuple(float(x) for x in config["std"])
    return IMAGENET_NORM
