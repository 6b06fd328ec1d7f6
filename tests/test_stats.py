"""The statistics of seeded ablations: paired t intervals, verdicts, power, claims (eseg_cli.analysis.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from eseg_cli.analysis import stats
from eseg_cli.errors import EsegError


def test_paired_interval_matches_the_textbook_and_scipy():
    # differences 1, 2, 3: mean 2, sd 1, n 3; t(0.975, df=2) = 4.302653 (any t table): 2 +- 4.302653 / sqrt(3)
    a = {0: 51.0, 1: 62.0, 2: 43.0}
    b = {0: 50.0, 1: 60.0, 2: 40.0}
    d = stats.paired_difference(a, b)
    half = 4.302653 / math.sqrt(3)
    assert d.n == 3 and d.seeds == [0, 1, 2] and d.mean == pytest.approx(2.0) and d.std == pytest.approx(1.0)
    assert d.low == pytest.approx(2 - half, abs=1e-5) and d.high == pytest.approx(2 + half, abs=1e-5)
    assert d.verdict == stats.INCONCLUSIVE  # the interval (-0.48, 4.48) straddles 0
    # the same interval from scipy's own paired test (another code path)
    ci = sps.ttest_rel(list(a.values()), list(b.values())).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))


def test_verdicts_holds_reversed_one_seed_and_pairing():
    base = {s: 50.0 + 3 * s for s in range(4)}  # seed-to-seed noise far larger than the differences
    better = {s: v + 1.0 + 0.1 * (-1) ** s for s, v in base.items()}
    d = stats.paired_difference(better, base)
    assert d.verdict == stats.HOLDS and d.low > 0  # paired: the seed noise cancels
    assert stats.paired_difference(base, better).verdict == stats.REVERSED
    # an unpaired comparison of the same numbers could not tell (the seeds' spread is 3.9 points)
    assert sps.ttest_ind(list(better.values()), list(base.values())).pvalue > 0.5
    one = stats.paired_difference({0: 55.0}, {0: 54.0, 1: 53.0})  # seed 1 has no partner: ignored
    assert one.n == 1 and one.low is None and one.verdict == stats.INCONCLUSIVE and "no confidence" in one.note
    assert stats.format_difference(one) == "+1.00 (1 seed: no CI)"
    assert stats.paired_difference({0: 1.0}, {1: 1.0}).mean is None
    assert stats.verdict(0.1, 2.0) == stats.HOLDS and stats.verdict(-2.0, -0.1) == stats.REVERSED
    assert stats.verdict(-0.1, 2.0) == stats.INCONCLUSIVE and stats.verdict(None, None) == stats.INCONCLUSIVE
    with pytest.raises(EsegError, match="confidence"):
        stats.paired_difference(base, better, confidence=95)


def test_power_agrees_with_simulation():
    sd, n = 1.7, 5
    mdd = stats.minimum_detectable_difference(sd, n)
    assert stats.power_paired(mdd, sd, n) == pytest.approx(0.8, abs=1e-6)
    # Monte Carlo: paired differences ~ N(mdd, sd); the t interval excludes 0 in about 80% of the experiments
    rng = np.random.default_rng(0)
    d = rng.normal(mdd, sd, size=(40_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > sps.t.ppf(0.975, n - 1)) == pytest.approx(0.8, abs=0.01)
    # large n: the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n)
    assert stats.minimum_detectable_difference(1.0, 400) == pytest.approx(2.8016 / 20, rel=0.01)
    assert stats.seeds_needed(sd, mdd * 1.001) == n and stats.seeds_needed(sd, mdd * 0.99) == n + 1
    assert stats.seeds_needed(sd, 0.6) > 20  # Table 8's smallest difference at the README's seed noise
    with pytest.raises(EsegError, match="2 seeds"):
        stats.minimum_detectable_difference(sd, 1)


def _row(ablation, cell, seed, miou, steps=1500, protocol=None, prev=None, **train):
    tr = {"dataset": "synthetic", "steps": steps, "overrides": None, **train}
    if protocol:
        tr.update(protocol=protocol, protocol_steps=1500)
    return {"ablation": ablation, "cell": cell, "seed": seed, "final_miou": miou, "prev_miou": prev,
            "prev_step": steps - 250 if prev is not None else None, "train": tr, "finished_at": f"2026-12-0{seed + 1}"}


def test_rows_groups_seeds_and_smoke():
    old = {"ablation": "levels", "cell": "p2-p9", "miou": 5.0, "final_miou": 5.0,
           "train": {"steps": 40, "overrides": {"seed": 3}}}
    assert stats.row_seed(old) == 3 and stats.row_seed({"train": {}}) == 0
    assert stats.row_miou({"miou": 50.0}) is None  # an old row's "miou" was the best validation: refused
    rows = [_row("levels", c, s, 50 + s + (c == "p2-p9"), protocol="protocol v1", prev=49 + s + 2 * (c == "p2-p9"))
            for s in range(3) for c in ("p3-p7", "p2-p9")] + [old]
    groups = stats.trained_groups(rows, "levels")
    assert len(groups) == 2 and len(groups[0]) == 6  # newest first; the smoke row alone in its setting
    s = stats.cell_summaries(groups[0])
    assert s["p2-p9"].values == {0: 51, 1: 52, 2: 53} and s["p2-p9"].std == pytest.approx(1.0)
    assert stats.format_mean_std(s["p2-p9"]) == "52.0 ± 1.0" and stats.ranking_stable(s) is True
    assert stats.describe_group(groups[0]) == "synthetic proxy (protocol v1), 3 seeds, 1500 steps"
    assert stats.is_smoke(old) and stats.describe_group([old]) == "smoke (?, 40 steps, 1 seed): not evidence"
    # a protocol run cut short is smoke; one without a protocol is smoke below SMOKE_STEPS
    assert stats.is_smoke(_row("levels", "p2-p9", 0, 1.0, steps=100, protocol="protocol v1"))
    assert not stats.is_smoke(_row("levels", "p2-p9", 0, 1.0, steps=stats.SMOKE_STEPS))
    rows[0]["seconds"], rows[2]["seconds"] = 700.0, 900.0  # p3-p7, seeds 0 and 1
    agg = stats.aggregate(rows, "levels")
    assert agg[0]["cells"][0]["seconds_mean"] == 800.0 and agg[0]["cells"][1]["seconds_mean"] is None
    assert [g["smoke"] for g in agg] == [False, True] and agg[0]["cells"][1]["text"] == "52.0 ± 1.0"


def test_claims_use_non_smoke_groups_and_carry_the_paper():
    rows = [_row("decoder", c, s, v + s) for s in range(3)
            for c, v in (("b1-bifpn", 56.0), ("b1-deeplab-os16", 55.0), ("b1-deeplab-os32", 55.0 + 0.5 * s))]
    rows += [_row("decoder", "b1-bifpn", 0, 90.0, steps=40), _row("decoder", "b1-deeplab-os16", 0, 1.0, steps=40)]
    res = {r.claim.key: r for r in stats.evaluate_claims(rows)}
    first = res["table8:b1-bifpn>b1-deeplab-os16"]
    assert first.difference.mean == pytest.approx(1.0) and first.difference.verdict == stats.HOLDS
    assert first.claim.paper_diff == 0.7 and "80.1 vs 79.4" in first.claim.paper
    assert first.setting == "synthetic proxy, 3 seeds, 1500 steps"  # the 40-step rows are never evidence
    assert res["table8:b1-deeplab-os16>b1-deeplab-os32"].difference.verdict == stats.INCONCLUSIVE
    assert res["table8:r50-bifpn>r50-deeplab-os16"].to_dict()["verdict"] == "not measured"
    assert res["levels:p2-p9>p3-p7"].difference is None
    extra = res["selftrain:student>teacher"].claim
    assert extra.paper_diff == 1.6 and "81.7 vs 80.1" in extra.paper


def test_cells_of_one_name_under_other_options_are_another_comparison():
    lite = {"scale": "eseg-lite-s", "aspp_scale": 0.5, "decoder_norm": "group"}
    rows = [dict(_row("decoder", c, s, 50.0 + s), options=opts) for opts in (lite, {"scale": "eseg-s"})
            for s in range(2) for c in ("b1-bifpn", "b1-deeplab-os16")]
    groups = stats.trained_groups(rows, "decoder")
    assert len(groups) == 2 and all(len(g) == 4 for g in groups)  # B1 and its stand-in never mix
    texts = sorted(stats.describe_group(g) for g in groups)
    assert texts == ["synthetic proxy, 2 seeds, 1500 steps, ESeg-Lite-S encoder for B1, ASPP rates x0.5, "
                     "GroupNorm decoder", "synthetic proxy, 2 seeds, 1500 steps, EfficientNet-B1"]
    levels = dict(_row("levels", "p2-p9", 0, 50.0), options={"scale": "eseg-lite-s"})
    assert stats.describe_group([levels]).endswith(", ESeg-Lite-S")
