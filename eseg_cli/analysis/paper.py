"""The paper's reported numbers (Tables 4, 5, 8 and Figure 4's stated FPS points).

They are stored once, as CSV files shipped inside the package (``eseg_cli/resources/paper/``, described by the
README there); this module only reads them, through :mod:`importlib.resources`. Table 3 (network scaling) lives
in :mod:`eseg_cli.models.scales`.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import pandas as pd

from eseg_cli.errors import EsegError

TABLES = ("table4", "table5", "table8", "figure4")


@cache
def _read(name: str) -> pd.DataFrame:
    with (files("eseg_cli") / "resources" / "paper" / f"{name}.csv").open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, keep_default_na=True)
    for col in ("key", "miou_note", "source", "cell"):
        if col in df:
            df[col] = df[col].fillna("").astype(str)
    return df


def load(name: str) -> pd.DataFrame:
    """One reference table as a DataFrame (a copy): ``table4``, ``table5``, ``table8`` or ``figure4``."""
    if name not in TABLES:
        raise EsegError(f"unknown paper table {name!r}; choose one of {', '.join(TABLES)}")
    return _read(name).copy()
