"""Table 3 of the paper: network size scaling. The one place these numbers live."""

from __future__ import annotations

from dataclasses import dataclass

from eseg_cli.errors import EsegError


@dataclass(frozen=True)
class Scale:
    """One row of Table 3."""

    name: str  # registry name, e.g. "eseg-s"
    lite: bool  # ESeg-Lite: Fused-MBConv everywhere, ReLU, no squeeze-and-excitation
    width: float  # encoder width multiplier
    depth: float  # encoder depth multiplier
    channels: int  # decoder (BiFPN) channels
    repeats: int  # decoder (BiFPN) repeats
    note: str = ""

    @property
    def display_name(self) -> str:
        """The paper's spelling, e.g. ``ESeg-Lite-S``."""
        parts = self.name.split("-")
        return "ESeg-" + "-".join(p.capitalize() if p == "lite" else p.upper() for p in parts[1:])


SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale("eseg-lite-s", True, 0.4, 0.6, 64, 1),
        Scale("eseg-lite-m", True, 0.6, 1.0, 80, 2),
        Scale("eseg-lite-l", True, 1.0, 1.0, 96, 3, note="EfficientNet-B0 width/depth"),
        Scale("eseg-s", False, 1.0, 1.1, 96, 4, note="EfficientNet-B1 width/depth"),
        Scale("eseg-m", False, 1.4, 1.8, 192, 5, note="EfficientNet-B4 width/depth"),
        Scale("eseg-l", False, 2.0, 3.1, 288, 6, note="EfficientNet-B7 width/depth"),
    )
}


def resolve_scale(name: str) -> Scale:
    """Accept ``eseg-s``, ``ESeg-S``, ``s``, ``S``, ``lite-s``, ``Lite_S`` ... and return the scale.

    Raises :class:`EsegError` listing the valid names otherwise.
    """
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    if not key.startswith("eseg-"):
        key = "eseg-" + key
    if key not in SCALES:
        valid = ", ".join(s.split("eseg-", 1)[1] for s in SCALES)
        raise EsegError(f"unknown scale {name!r}; choose one of: {valid} (case-insensitive, e.g. --scale lite-s)")
    return SCALES[key]
