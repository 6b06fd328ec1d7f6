"""The paper's reported numbers (Tables 4, 5, 8 and Figure 4's stated FPS points).

They are stored once, as CSV in ``reports/paper/`` of the repository; this module only reads them.
Table 3 (network scaling) lives in :mod:`eseg_cli.models.scales`.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pandas as pd

from eseg_cli.errors import EsegError

TABLES = ("table4", "table5", "table8", "figure4")


def paper_dir() -> Path:
    """Where the reference CSVs live: ``$ESEG_PAPER_DIR`` or ``<repo>/reports/paper``."""
    env = os.environ.get("ESEG_PAPER_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "reports" / "paper"


@cache
def _read(name: str, folder: str) -> pd.DataFrame:
    path = Path(folder) / f"{name}.csv"
    if not path.is_file():
        raise EsegError(f"the paper's reference data {path} is missing; set ESEG_PAPER_DIR to the folder "
                        "holding table4.csv, table5.csv, table8.csv and figure4.csv (reports/paper in the repo)")
    df = pd.read_csv(path, keep_default_na=True)
    for col in ("key", "miou_note", "source", "cell"):
        if col in df:
            df[col] = df[col].fillna("").astype(str)
    return df


def load(name: str) -> pd.DataFrame:
    """One reference table as a DataFrame (a copy): ``table4``, ``table5``, ``table8`` or ``figure4``."""
    if name not in TABLES:
        raise EsegError(f"unknown paper table {name!r}; choose one of {', '.join(TABLES)}")
    return _read(name, str(paper_dir())).copy()

