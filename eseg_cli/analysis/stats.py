"""Statistics of seeded ablations, shared by ``eseg ablate --json``, ``eseg report`` (tables, HTML) and ``eseg plot``.

Every trained ``results.jsonl`` row is one (cell, seed) pair; rows of one ablation run under one setting (the same
training settings but the seed: :func:`setting_of`) form a *group*, and cells of a group share their seeds, so two
cells can be compared seed by seed.

- :func:`cell_summaries`: per cell, the final checkpoint's val mIoU over seeds (mean, sample std, each seed's value),
  and the same for the second-to-last validation, so a report can say whether the ranking was stable.
- :func:`paired_difference`: cell A - cell B on the seeds both have, with a two-sided Student-t confidence interval
  on the paired differences (``scipy.stats.t``); :func:`verdict` reads it: **holds** (the interval is above 0),
  **reversed** (below 0) or **inconclusive at this budget** (it straddles 0, or there is one seed and no interval).
- :data:`CLAIMS`: the paper's claims, each as cells A and B of an ablation and the paper's own figure.
- :func:`minimum_detectable_difference` / :func:`seeds_needed`: the power of the paired t-test (non-central t) for
  a pilot's std of paired differences, to choose the number of seeds before spending the budget.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import optimize
from scipy import stats as sps

from eseg_cli.analysis import paper
from eseg_cli.errors import EsegError
from eseg_cli.models import SCALES

CONFIDENCE = 0.95
HOLDS, REVERSED, INCONCLUSIVE = "holds", "reversed", "inconclusive at this budget"


# ----------------------------------------------------------------------------- rows

def row_seed(row: dict) -> int:
    """The seed of a results row: its ``seed``; a row written before seeds existed trained with its config's seed,
    the one given as ``--set seed=N`` or else 0 (every recipe's default)."""
    if row.get("seed") is not None:
        return int(row["seed"])
    overrides = (row.get("train") or {}).get("overrides") or {}
    return int(overrides.get("seed", 0) or 0)


def row_miou(row: dict) -> float | None:
    """The final checkpoint's val mIoU of a row (``final_miou``). Rows written before ``final_miou`` existed held the
    *best* validation in ``miou``: they are refused (None), not read as final."""
    v = row.get("final_miou")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def setting_of(row: dict) -> str:
    """What the cells of one comparison share: the ablation, its options (scale, ASPP scale, decoder norm), the
    training settings without the seed, the extra model options given to every cell and the FLOPs resolution (a
    text key). Cells of the same name under other options (another scale's encoder) are another comparison."""
    train = dict(row.get("train") or {})
    overrides = {k: v for k, v in (train.get("overrides") or {}).items() if k != "seed"}
    train["overrides"] = overrides or None
    return json.dumps([row.get("ablation"), row.get("options"), train, row.get("common_kwargs"),
                       row.get("resolution")], sort_keys=True, default=str)


def protocol_label(row: dict) -> dict:
    """Dataset, steps and protocol name of a trained row (``train`` settings), for titles and column headers."""
    train = row.get("train") or {}
    return {"dataset": train.get("dataset"), "steps": train.get("steps"), "protocol": train.get("protocol")}


def trained_groups(rows: list[dict], ablation: str) -> list[list[dict]]:
    """The trained rows of ``ablation`` grouped by :func:`setting_of`, newest group first (by ``finished_at``).
    A (cell, seed) pair measured twice in one group keeps its latest row."""
    groups: dict[str, dict[tuple, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("ablation") != ablation or row_miou(r) is None:
            continue
        key = (r.get("cell"), row_seed(r))
        g = groups[setting_of(r)]
        if key not in g or str(r.get("finished_at", "")) >= str(g[key].get("finished_at", "")):
            g[key] = r
    out = [list(g.values()) for g in groups.values()]
    return sorted(out, key=lambda g: max(str(r.get("finished_at", "")) for r in g), reverse=True)


# ----------------------------------------------------------------------------- per cell

@dataclass
class CellSummary:
    """One cell of one setting: the final val mIoU of each seed, its mean and sample std (None with one seed)."""

    cell: str
    label: str
    values: dict[int, float]  # seed -> final val mIoU
    prev_values: dict[int, float] = field(default_factory=dict)  # seed -> second-to-last validation's mIoU
    prev_step: int | None = None
    seconds: dict[int, float] = field(default_factory=dict)  # seed -> wall-clock seconds of the cell's row

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.values.values())))

    @property
    def std(self) -> float | None:
        return float(np.std(list(self.values.values()), ddof=1)) if self.n > 1 else None

    @property
    def prev_mean(self) -> float | None:
        return float(np.mean(list(self.prev_values.values()))) if self.prev_values else None

    def to_dict(self) -> dict:
        return {"cell": self.cell, "label": self.label, "n": self.n, "mean": self.mean, "std": self.std,
                "text": format_mean_std(self),
                "seeds": sorted(self.values), "values": {str(k): v for k, v in sorted(self.values.items())},
                "prev_mean": self.prev_mean, "prev_step": self.prev_step,
                "seconds_mean": float(np.mean(list(self.seconds.values()))) if self.seconds else None}


def cell_summaries(group: list[dict]) -> dict[str, CellSummary]:
    """Per cell of one group (see :func:`trained_groups`), in the order the cells first appear."""
    out: dict[str, CellSummary] = {}
    for r in group:
        s = out.setdefault(r["cell"], CellSummary(r["cell"], r.get("label") or r["cell"], {}))
        s.values[row_seed(r)] = row_miou(r)
        if r.get("seconds") is not None:
            s.seconds[row_seed(r)] = float(r["seconds"])  # measuring and training: the budget a pilot measures
        if r.get("prev_miou") is not None:
            s.prev_values[row_seed(r)] = float(r["prev_miou"])
            s.prev_step = r.get("prev_step")
    return out


def format_mean_std(s: CellSummary | None, nd: int = 1) -> str | None:
    """``55.1 ± 0.4`` (``55.1 (1 seed)`` with one seed); None without a summary."""
    if s is None:
        return None
    return f"{s.mean:.{nd}f} ± {s.std:.{nd}f}" if s.std is not None else f"{s.mean:.{nd}f} (1 seed)"


def ranking_stable(summaries: dict[str, CellSummary]) -> bool | None:
    """Whether the cells' mean ranking is the same at the last two validations (None when a cell has no
    second-to-last validation)."""
    if len(summaries) < 2 or any(s.prev_mean is None for s in summaries.values()):
        return None
    last = sorted(summaries, key=lambda c: summaries[c].mean, reverse=True)
    prev = sorted(summaries, key=lambda c: summaries[c].prev_mean, reverse=True)
    return last == prev


# ----------------------------------------------------------------------------- paired differences

@dataclass
class PairedDifference:
    """Cell A - cell B over the seeds both have: the mean difference, its sample std and the t interval."""

    n: int
    seeds: list[int]
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    confidence: float
    verdict: str
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def verdict(low: float | None, high: float | None) -> str:
    """**holds** when the interval is above 0, **reversed** when below, otherwise (or without an interval)
    **inconclusive at this budget**."""
    if low is None or high is None:
        return INCONCLUSIVE
    if low > 0:
        return HOLDS
    if high < 0:
        return REVERSED
    return INCONCLUSIVE


def paired_difference(a: dict[int, float], b: dict[int, float], confidence: float = CONFIDENCE) -> PairedDifference:
    """A - B on the seeds both cells have, with a two-sided Student-t interval on the paired differences:
    mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n). With fewer than two shared seeds there is no interval and the
    verdict is inconclusive."""
    if not 0 < confidence < 1:
        raise EsegError(f"'confidence' must be between 0 and 1, got {confidence}", field="confidence")
    seeds = sorted(set(a) & set(b))
    n = len(seeds)
    if n == 0:
        return PairedDifference(0, [], None, None, None, None, confidence, INCONCLUSIVE, "no seed in common")
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    mean = float(d.mean())
    if n == 1:
        return PairedDifference(1, seeds, mean, None, None, None, confidence, INCONCLUSIVE,
                                "1 seed: no confidence interval")
    sd = float(d.std(ddof=1))
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    return PairedDifference(n, seeds, mean, sd, low, high, confidence, verdict(low, high))


def format_difference(d: PairedDifference, nd: int = 2) -> str:
    """``+0.70 [+0.21, +1.19] (3 seeds)``; ``+0.70 (1 seed: no CI)``; ``-`` when nothing is shared."""
    if d.mean is None:
        return "-"
    if d.low is None:
        return f"{d.mean:+.{nd}f} (1 seed: no CI)"
    return f"{d.mean:+.{nd}f} [{d.low:+.{nd}f}, {d.high:+.{nd}f}] ({d.n} seeds)"


# ----------------------------------------------------------------------------- power

def power_paired(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """The power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs when the true mean difference is
    ``delta`` and the differences' std ``sd`` (non-central t with n-1 degrees of freedom)."""
    if n < 2:
        return 0.0
    if sd <= 0:
        raise EsegError(f"the std of the paired differences must be > 0, got {sd}", field="sd")
    df = n - 1
    nc = abs(delta) / (sd / math.sqrt(n))
    crit = sps.t.ppf(1 - alpha / 2, df)
    upper = float(sps.nct.sf(crit, df, nc))
    lower = float(sps.nct.cdf(-crit, df, nc))  # the wrong-sign tail: scipy gives NaN where it underflows
    return upper + (lower if math.isfinite(lower) else 0.0)


def minimum_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true paired difference that ``n`` seeds detect (a CI excluding 0) with probability ``power``,
    given the std ``sd`` of the paired differences measured in a pilot."""
    if n < 2:
        raise EsegError(f"a paired t-test needs at least 2 seeds, got {n}", field="seeds")
    if sd <= 0:
        raise EsegError(f"the std of the paired differences must be > 0, got {sd}", field="sd")
    hi = sd
    while power_paired(hi, sd, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda x: power_paired(x, sd, n, alpha) - power, 0.0, hi, xtol=1e-9))


def seeds_needed(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8, max_seeds: int = 1000) -> int:
    """The fewest seeds whose paired t-test detects a true difference ``delta`` with probability ``power``."""
    if delta == 0:
        raise EsegError("the difference to detect must not be 0", field="delta")
    for n in range(2, max_seeds + 1):
        if power_paired(delta, sd, n, alpha) >= power:
            return n
    raise EsegError(f"more than {max_seeds} seeds are needed to detect {delta} at std {sd}", field="delta")


# ----------------------------------------------------------------------------- the paper's claims

@dataclass(frozen=True)
class Claim:
    """"Cell ``a`` beats cell ``b``" in ablation ``ablation``, with the paper's figure for it."""

    key: str
    ablation: str
    text: str
    a: str
    b: str
    paper: str  # the paper's figure, in words
    paper_diff: float | None = None  # a - b in the paper, mIoU points (None where the reference data has none)


def _table8_claims() -> list[Claim]:
    t8 = {r["cell"]: r for r in paper.load("table8").to_dict("records")}
    out = []
    for enc, name in (("b1", "B1"), ("r50", "R50")):
        for a, b, text in ((f"{enc}-bifpn", f"{enc}-deeplab-os16", "BiFPN > DeepLabV3+ w/ atrous"),
                           (f"{enc}-deeplab-os16", f"{enc}-deeplab-os32", "DeepLabV3+ w/ atrous > w/o atrous"),
                           (f"{enc}-bifpn", f"{enc}-deeplab-os32", "BiFPN > DeepLabV3+ w/o atrous")):
            pa, pb = t8[a]["miou"], t8[b]["miou"]
            out.append(Claim(f"table8:{a}>{b}", "decoder", f"Table 8 ({name}): {text}", a, b,
                             f"{pa:.1f} vs {pb:.1f} ({pa - pb:+.1f}), Cityscapes val", round(pa - pb, 1)))
    return out


_NO_NUMBER = "the paper's ablation: {} (its numbers are not in the reference data)"


def _level_claims() -> list[Claim]:
    return [
        Claim("levels:p2-p9>p3-p7", "levels", "Levels: P2-P9 > P3-P7 (EfficientDet's)", "p2-p9", "p3-p7",
              _NO_NUMBER.format("P2-P9 best")),
        Claim("levels:p2-p7>p3-p7", "levels", "Levels: + P2 on P3-P7", "p2-p7", "p3-p7",
              _NO_NUMBER.format("P2 helps")),
        Claim("levels:p3-p9>p3-p7", "levels", "Levels: + P8-P9 on P3-P7", "p3-p9", "p3-p7",
              _NO_NUMBER.format("P8-P9 help")),
        Claim("levels:p2-p9>p3-p9", "levels", "Levels: + P2 on P3-P9", "p2-p9", "p3-p9",
              _NO_NUMBER.format("P2 helps")),
        Claim("levels:p2-p9>p2-p7", "levels", "Levels: + P8-P9 on P2-P7", "p2-p9", "p2-p7",
              _NO_NUMBER.format("P8-P9 help")),
    ]


def _fusion_claims() -> list[Claim]:
    return [
        Claim("fusion:fastattn>softmax", "fusion", "Fusion: BiFPN fast normalised > softmax",
              "fastattn", "softmax", "EfficientDet: about equal accuracy, fast normalised is faster (no number here)"),
        Claim("fusion:fastattn>sum", "fusion", "Fusion: BiFPN fast normalised > sum", "fastattn", "sum",
              _NO_NUMBER.format("weighted fusion")),
        Claim("fusion:headsoftmax>headsum", "fusion", "Fusion: head softmax > sum of levels", "fastattn",
              "head-sum", _NO_NUMBER.format("softmax head fusion")),
    ]


def _extra_data_claims() -> list[Claim]:
    s = paper.load("table4").set_index("key").loc["eseg-s"]
    return [Claim("selftrain:student>teacher", "selftrain", "Extra data: student > teacher",
                  "student", "teacher",
                  f"ESeg-S {s['miou_extra']:.1f} vs {s['miou']:.1f} ({s['miou_extra'] - s['miou']:+.1f}), "
                  "Mapillary + Cityscapes coarse pseudo-labels", round(float(s["miou_extra"] - s["miou"]), 1))]


def _pretraining_claims() -> list[Claim]:
    return [Claim("pretrained:pretrained>scratch", "pretrained", "ImageNet-pretrained encoder > from scratch",
                  "pretrained", "scratch", "every model of the paper starts from an ImageNet-pretrained encoder "
                  "(no from-scratch number)")]


def claims() -> list[Claim]:
    """Every claim the report checks: Table 8, the level range, the fusion modes, extra data and pretraining."""
    return _table8_claims() + _level_claims() + _fusion_claims() + _extra_data_claims() + _pretraining_claims()


def describe_group(group: list[dict]) -> str:
    """``synthetic proxy (protocol v1), 3 seeds, 1500 steps, ESeg-Lite-S`` / ``smoke (synthetic, 40 steps, 1 seed):
    not evidence``: what a group's numbers are, for a column header. Runs shorter than their protocol's steps
    (or, without a protocol, than :data:`SMOKE_STEPS`) are labelled smoke."""
    label = protocol_label(group[0])
    seeds = sorted({row_seed(r) for r in group})
    n = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    ds, steps = label["dataset"] or "?", label["steps"]
    if is_smoke(group[0]):
        return f"smoke ({ds}, {steps} steps, {n}): not evidence"
    where = f"{ds} proxy" if ds != "cityscapes" else "Cityscapes"
    proto = f" ({label['protocol']})" if label["protocol"] else ""
    return f"{where}{proto}, {n}, {steps} steps{_options_text(group[0])}"


def _options_text(row: dict) -> str:
    """``, ESeg-Lite-S encoder for B1, ASPP rates x0.5, GroupNorm decoder`` from a row's ablation options."""
    opts = row.get("options") or {}
    parts = []
    if opts.get("scale"):
        name = SCALES[opts["scale"]].display_name if opts["scale"] in SCALES else opts["scale"]
        if row.get("ablation") == "decoder":
            parts.append("EfficientNet-B1" if opts["scale"] == "eseg-s" else f"{name} encoder for B1")
        else:
            parts.append(name)
    if opts.get("aspp_scale") is not None:
        parts.append(f"ASPP rates x{opts['aspp_scale']:g}")
    if opts.get("decoder_norm") == "group":
        parts.append("GroupNorm decoder")
    return "".join(f", {p}" for p in parts)


# Below this many steps a run without a protocol only shows that the pipeline works (the synthetic recipe's own
# schedule is 1500 steps; its val mIoU at 250 steps is about 20, see recipes/synthetic.yaml).
SMOKE_STEPS = 1000


def is_smoke(row: dict) -> bool:
    """A row that is not evidence: trained for fewer steps than its protocol asks (``train.protocol_steps``), or,
    with no protocol named, for fewer than :data:`SMOKE_STEPS`."""
    train = row.get("train") or {}
    steps = train.get("steps") or 0
    need = train.get("protocol_steps") or (None if train.get("protocol") else SMOKE_STEPS)
    return need is not None and steps < need


@dataclass
class ClaimResult:
    claim: Claim
    difference: PairedDifference | None  # None: the cells were not trained (with a non-smoke setting)
    setting: str | None
    a: CellSummary | None = None
    b: CellSummary | None = None

    def to_dict(self) -> dict:
        d = {"claim": self.claim.text, "key": self.claim.key, "a": self.claim.a, "b": self.claim.b,
             "paper": self.claim.paper, "paper_diff": self.claim.paper_diff, "setting": self.setting,
             "verdict": self.difference.verdict if self.difference else "not measured"}
        if self.difference:
            d["difference"] = self.difference.to_dict()
        return d


def evaluate_claims(rows: list[dict], claim_list: list[Claim] | None = None) -> list[ClaimResult]:
    """Each claim on the newest non-smoke group of its ablation that holds both of its cells. Smoke groups are never
    evidence: a claim measured only by them has no difference, and its setting names the smoke run."""
    out = []
    groups: dict[str, list[list[dict]]] = {}
    for c in claim_list or claims():
        if c.ablation not in groups:
            groups[c.ablation] = trained_groups(rows, c.ablation)
        both = [g for g in groups[c.ablation] if {c.a, c.b} <= {r["cell"] for r in g}]
        evidence = [g for g in both if not is_smoke(g[0])]
        if evidence:
            s = cell_summaries(evidence[0])
            res = ClaimResult(c, paired_difference(s[c.a].values, s[c.b].values), describe_group(evidence[0]),
                              s[c.a], s[c.b])
        else:
            res = ClaimResult(c, None, f"only {describe_group(both[0])}" if both else None)
        out.append(res)
    return out


def aggregate(rows: list[dict], ablation: str) -> list[dict]:
    """Per setting (newest first) and cell: n, mean, std, each seed's value, as plain dicts (``eseg ablate --json``)."""
    out = []
    for g in trained_groups(rows, ablation):
        s = cell_summaries(g)
        out.append({"setting": describe_group(g), "smoke": is_smoke(g[0]), "ranking_stable": ranking_stable(s),
                    "cells": [v.to_dict() for v in s.values()]})
    return out
