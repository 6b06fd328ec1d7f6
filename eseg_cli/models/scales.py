"""Table 3 of the paper: network size scaling. The one place these numbers live."""

from __future__ import annotations

from dataclasses import dataclass


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


# EfficientNet's compound scaling (width, depth) of B0..B7, as timm's ``efficientnet_bX`` builds them. ESeg-S/M/L
# and ESeg-Lite-L take theirs from here, and so do the EfficientNet encoders of DeepLabV3+ (Table 8).
EFFICIENTNET_SCALING: dict[str, tuple[float, float]] = {
    "efficientnet_b0": (1.0, 1.0), "efficientnet_b1": (1.0, 1.1), "efficientnet_b2": (1.1, 1.2),
    "efficientnet_b3": (1.2, 1.4), "efficientnet_b4": (1.4, 1.8), "efficientnet_b5": (1.6, 2.2),
    "efficientnet_b6": (1.8, 2.6), "efficientnet_b7": (2.0, 3.1),
}


def _like(b: int) -> dict:
    """Width and depth of EfficientNet-B``b``, with a note saying so."""
    width, depth = EFFICIENTNET_SCALING[f"efficientnet_b{b}"]
    return dict(width=width, depth=depth, note=f"EfficientNet-B{b} width/depth")


SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale("eseg-lite-s", True, 0.4, 0.6, 64, 1),
        Scale("eseg-lite-m", True, 0.6, 1.0, 80, 2),
        Scale("eseg-lite-l", True, channels=96, repeats=3, **_like(0)),
        Scale("eseg-s", False, channels=96, repeats=4, **_like(1)),
        Scale("eseg-m", False, channels=192, repeats=5, **_like(4)),
        Scale("eseg-l", False, channels=288, repeats=6, **_like(7)),
    )
}
