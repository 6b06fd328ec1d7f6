"""Mixed precision: the one table from an ``amp`` setting to the dtype that autocast runs in."""

from __future__ import annotations

import torch

from eseg_cli.errors import EsegError

#: ``amp`` setting -> autocast dtype (no setting: full float32)
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str | None, device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (None, ``"none"`` or ``"fp32"``: full precision), checked for ``device``
    when given: fp16 needs CUDA (its gradient scaler and kernels); bf16 works on CPU, CUDA and XLA.
    """
    if amp in (None, "", "none", "fp32"):
        return None
    if amp not in AMP_DTYPES:
        raise EsegError(f"'amp' must be one of {', '.join(AMP_DTYPES)} (or none), got {amp!r}", field="amp")
    if device is not None and amp == "fp16" and torch.device(device).type != "cuda":
        raise EsegError("amp fp16 needs CUDA; use amp bf16 on CPU and XLA", field="amp")
    return AMP_DTYPES[amp]


def autocast(device: torch.device | str, amp: str | None) -> torch.autocast:
    """``torch.autocast`` for ``amp`` on ``device`` (a disabled one for full precision)."""
    dtype = amp_dtype(amp, device)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
