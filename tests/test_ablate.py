"""`eseg ablate`: cells, measurements, the results file, resuming, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eseg_cli.analysis import ablate
from eseg_cli.cli import app
from eseg_cli.errors import EsegError

TINY = {"width": 0.25, "depth": 0.3, "channels": 16, "repeats": 1}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ESEG_CACHE_DIR", str(tmp_path / "cache"))


def test_grids_match_the_paper():
    dec = ablate.cells_for("decoder")
    assert [c.name for c in dec] == ["b1-bifpn", "b1-deeplab-os16", "b1-deeplab-os32", "r50-bifpn",
                                     "r50-deeplab-os16", "r50-deeplab-os32"]
    assert dec[3].kwargs == {"encoder": "resnet50"} and dec[3].model == "eseg-s"
    assert {c.kwargs["output_stride"] for c in dec if c.model == "deeplabv3plus"} == {16, 32}
    assert [(c.kwargs["min_level"], c.kwargs["max_level"]) for c in ablate.cells_for("levels")] == \
        [(3, 7), (2, 7), (3, 9), (2, 9)]
    assert {c.model for c in ablate.cells_for("fusion", "S")} == {"eseg-s"}  # one name per model in the rows
    fus = {(c.kwargs["fusion"], c.kwargs["head_fusion"]) for c in ablate.cells_for("fusion", "lite-s")}
    assert fus == {("fastattn", "softmax"), ("softmax", "softmax"), ("sum", "softmax"), ("fastattn", "sum")}
    # another scale's encoder stands in for B1 under both decoders; the ResNet-50 rows are left out
    lite = ablate.cells_for("decoder", "lite-s")
    assert [c.name for c in lite] == ["b1-bifpn", "b1-deeplab-os16", "b1-deeplab-os32"]
    assert lite[0].model == "eseg-lite-s" and {c.kwargs.get("encoder") for c in lite[1:]} == {"eseg-lite-s"}
    with pytest.raises(EsegError, match="unknown ablation"):
        ablate.cells_for("widths")


def test_measure_is_cached(tmp_path):
    a = ablate.measure("eseg-lite-s", TINY, resolution=(64, 64))
    b = ablate.measure("eseg-lite-s", TINY, resolution=(64, 64))
    assert not a["cached"] and b["cached"]
    assert a["flops"] == b["flops"] > a["flops_conv"] > 0
    assert (tmp_path / "cache" / "measurements.json").is_file()


def test_rows_appended_and_resumed(tmp_path):
    out = tmp_path / "abl"
    first = ablate.run_ablation("levels", out, scale="lite-s", resolution=(64, 64), model_kwargs=TINY,
                                cells=["p3-p7"])
    assert len(first) == 1
    events = []
    rows = ablate.run_ablation("levels", out, scale="lite-s", resolution=(64, 64), model_kwargs=TINY,
                               on_event=events.append)
    # the cell finished before the "interruption" is skipped, the other three run
    cells = [(e.item, e.message.split()[0]) for e in events if e.kind == "advance"]
    assert cells == [("p3-p7", "skipped"), ("p2-p7", "done"), ("p3-p9", "done"), ("p2-p9", "done")]
    assert [e.step for e in events if e.kind == "advance"] == [1, 2, 3, 4] and events[0].total == 4
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and [json.loads(x)["cell"] for x in lines] == [r["cell"] for r in rows]
    by = {r["cell"]: r for r in rows}
    assert by["p2-p9"]["flops"] > by["p3-p7"]["flops"]  # more levels cost more
    assert by["p3-p7"]["model_kwargs"]["min_level"] == 3 and by["p3-p7"]["paper_flops"] is None
    # different settings are a different cell result, not a skip
    ablate.run_ablation("levels", out, scale="lite-s", resolution=(64, 96), model_kwargs=TINY, cells=["p2-p9"])
    assert len((out / "results.jsonl").read_text().splitlines()) == 5


def test_decoder_rows_carry_the_paper_values(tmp_path, monkeypatch):
    # the paper's FLOPs only apply at 1024x2048: fake the measurement to check the difference column
    monkeypatch.setattr(ablate, "measure", lambda *a, **k: {"params": 1, "params_with_bn_stats": 1,
                                                            "flops": 36.0e9, "flops_conv": 34.0e9})
    rows = ablate.run_ablation("decoder", tmp_path, cells=["b1-bifpn"])
    r = rows[0]
    assert r["paper_flops"] == 34.5e9 and r["paper_miou"] == 80.1
    assert r["flops_diff_pct"] == round(100 * 1.5 / 34.5, 2) and r["flops_conv_diff_pct"] == round(-50 / 34.5, 2)


def test_cli_json_table_and_errors(tmp_path):
    res = runner.invoke(app, ["ablate", "fusion", "-s", "lite-s", "-r", "64x64", "--cell", "sum", "-o",
                              str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rows = out["rows"]
    assert [r["cell"] for r in rows] == ["sum"] and rows[0]["model_kwargs"]["fusion"] == "sum"
    assert out["aggregate"] == []  # nothing trained: no mIoU to aggregate
    res = runner.invoke(app, ["ablate", "fusion", "-s", "lite-s", "-r", "64x64", "--cell", "sum", "-o",
                              str(tmp_path)])
    assert res.exit_code == 0 and "skipped" in res.output and "eseg ablate fusion" in res.output
    res = runner.invoke(app, ["ablate", "widths", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "unknown ablation" in res.output
    res = runner.invoke(app, ["ablate", "fusion", "--cell", "nope", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "nope" in res.output and "Invalid value" in res.output  # a choice: click refuses
    res = runner.invoke(app, ["ablate", "fusion", "--cell", "P3-P7", "-o", str(tmp_path)])  # a cell of another grid
    assert res.exit_code == 2 and "unknown cell" in res.output


def test_broken_results_file_is_named(tmp_path):
    (tmp_path / "fusion").mkdir()
    (tmp_path / "fusion" / "results.jsonl").write_text("{not json\n")
    res = runner.invoke(app, ["ablate", "fusion", "-o", str(tmp_path), "-r", "64x64"])
    assert res.exit_code == 2 and "results.jsonl line 1" in res.output


def test_set_overrides_are_parsed():
    from eseg_cli.cli.ablate import parse_sets

    assert parse_sets(["batch_size=2", "crop_size=[128, 64]", "loss=ce"]) == \
        {"batch_size": 2, "crop_size": [128, 64], "loss": "ce"}
    with pytest.raises(EsegError, match="KEY=VALUE"):
        parse_sets(["batch_size"])


def test_training_cells_same_settings_resume_and_skip(tmp_path, monkeypatch):
    pytest.importorskip("eseg_cli.engine.trainer")
    import yaml

    import eseg_cli.engine as engine
    from eseg_cli.data import synthetic

    root = tmp_path / "data"
    synthetic.generate(root, num_train=4, num_val=2, size=(64, 128))
    settings = {"crop_size": [64, 64], "batch_size": 2, "val_batch_size": 2, "workers": 0, "warmup_steps": 0,
                "loss": "ce", "log_interval": 1, "eval_interval": 2, "checkpoint_interval": 1, "device": "cpu"}
    kw = dict(scale="lite-s", resolution=(64, 64), model_kwargs=TINY, cells=["sum", "head-sum"], train=True,
              steps=2, data_root=str(root), train_overrides=settings)
    real_train = engine.train
    calls = []

    def killed_after_one_step(config, run_dir, **k):
        calls.append(k.get("resume"))
        real_train(config, run_dir, stop_after=1, **k)
        raise KeyboardInterrupt  # the ablation dies here, before the cell's row is written

    monkeypatch.setattr(engine, "train", killed_after_one_step)
    with pytest.raises(KeyboardInterrupt):
        ablate.run_ablation("fusion", tmp_path / "abl", **kw)
    assert not (tmp_path / "abl" / "results.jsonl").exists()

    def recorded(config, run_dir, **k):
        calls.append(k.get("resume"))
        return real_train(config, run_dir, **k)

    monkeypatch.setattr(engine, "train", recorded)
    rows = ablate.run_ablation("fusion", tmp_path / "abl", **kw)
    assert calls == [False, True, False]  # "sum" continued from checkpoints/last.pt, "head-sum" started fresh
    configs = []
    for r in rows:
        assert 0.0 <= r["miou"] <= 100.0 and r["pixacc"] is not None and r["train"]["steps"] == 2
        run = next((tmp_path / "abl" / "runs").glob(f"{r['cell']}-*"))
        assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
        c = yaml.safe_load((run / "config.yaml").read_text())
        assert c["model"]["fusion"] == r["model_kwargs"]["fusion"]
        configs.append({k: v for k, v in c.items() if k != "model"})
    assert configs[0] == configs[1] and configs[0]["batch_size"] == 2  # identical settings but the model
    events = []
    ablate.run_ablation("fusion", tmp_path / "abl", **kw, on_event=events.append)
    assert [e.message.split()[0] for e in events if e.kind == "advance"] == ["skipped", "skipped"]
    assert len(calls) == 3 and not any(e.task == "train" for e in events)


def _tiny_data(tmp_path):
    from eseg_cli.data import synthetic

    root = tmp_path / "data"
    synthetic.generate(root, num_train=4, num_val=2, size=(64, 128))
    return root


TINY_TRAIN = {"crop_size": [64, 64], "batch_size": 2, "val_batch_size": 2, "workers": 0, "warmup_steps": 0,
              "loss": "ce", "log_interval": 1, "eval_interval": 1, "checkpoint_interval": 1, "device": "cpu",
              "check_data": False}


def test_seeds_resume_after_a_kill_skips_finished_pairs(tmp_path, monkeypatch):
    pytest.importorskip("eseg_cli.engine.trainer")
    import eseg_cli.engine as engine

    kw = dict(scale="lite-s", resolution=(64, 64), model_kwargs=TINY, cells=["sum", "head-sum"], train=True,
              steps=2, data_root=str(_tiny_data(tmp_path)), train_overrides=TINY_TRAIN, seeds=[0, 1])
    real_train = engine.train
    calls = []

    def killed_in_seed_1(config, run_dir, **k):
        calls.append((config.seed, Path(run_dir).name.split("-")[0], k.get("resume")))
        if config.seed == 1:  # seed 0 of both cells finished; the first cell of seed 1 dies after one step
            real_train(config, run_dir, stop_after=1, **k)
            raise KeyboardInterrupt
        return real_train(config, run_dir, **k)

    monkeypatch.setattr(engine, "train", killed_in_seed_1)
    with pytest.raises(KeyboardInterrupt):
        ablate.run_ablation("fusion", tmp_path / "abl", **kw)
    rows = ablate.read_results(tmp_path / "abl" / "results.jsonl")
    assert [(r["cell"], r["seed"]) for r in rows] == [("sum", 0), ("head-sum", 0)]  # seed by seed

    calls.clear()
    monkeypatch.setattr(engine, "train", lambda config, run_dir, **k: (
        calls.append((config.seed, Path(run_dir).name.split("-")[0], k.get("resume"))), real_train(config, run_dir,
                                                                                                   **k))[1])
    events = []
    rows = ablate.run_ablation("fusion", tmp_path / "abl", **kw, on_event=events.append)
    # the finished pairs are skipped, the killed one resumes from its checkpoint, the last one starts fresh
    assert [(e.item, e.message.split()[0]) for e in events if e.task == "ablate" and e.kind == "advance"] == [
        ("sum seed 0", "skipped"), ("head-sum seed 0", "skipped"), ("sum seed 1", "done"), ("head-sum seed 1", "done")]
    assert calls == [(1, "sum", True), (1, "head", False)]
    assert [(r["cell"], r["seed"]) for r in rows] == [("sum", 0), ("head-sum", 0), ("sum", 1), ("head-sum", 1)]
    for r in rows:
        # the final checkpoint's validation and the one before it (validations every step: steps 2 and 1)
        assert r["final_step"] == 2 and r["prev_step"] == 1 and 0 <= r["final_miou"] <= 100
        assert r["final_miou"] == r["miou"] and r["prev_miou"] is not None
        run = Path(r["run_dir"])
        assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    # the seed reached the engine: the two seeds' runs of one cell differ, and their config says which seed
    import yaml

    assert {yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())["seed"] for r in rows} == {0, 1}
    # a third run skips everything; the seeds of one cell share one setting, so they aggregate
    again = ablate.run_ablation("fusion", tmp_path / "abl", **kw)
    assert len(again) == 4 and len(ablate.read_results(tmp_path / "abl" / "results.jsonl")) == 4
    from eseg_cli.analysis import stats

    (group,) = stats.trained_groups(again, "fusion")
    assert {c: s.n for c, s in stats.cell_summaries(group).items()} == {"sum": 2, "head-sum": 2}


def test_seed_options_and_old_rows(tmp_path):
    with pytest.raises(EsegError, match="'train'"):
        ablate.run_ablation("fusion", tmp_path, scale="lite-s", resolution=(64, 64), seeds=[0, 1])
    with pytest.raises(EsegError, match="not also as the override seed"):
        ablate.run_ablation("fusion", tmp_path, scale="lite-s", train=True, seeds=[0], train_overrides={"seed": 1})
    res = runner.invoke(app, ["ablate", "fusion", "--train", "--seeds", "2", "--seed", "3", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "not both" in res.output
    # a row written before seeds existed reads as its config's seed (0 unless --set seed=N)
    from eseg_cli.analysis.stats import row_seed

    assert row_seed({"train": {"overrides": {"crop_size": [128, 128]}}}) == 0
    assert ablate.scaled_aspp_rates(16, 0.5) == [3, 6, 9] and ablate.scaled_aspp_rates(32, 0.25) == [1, 2, 2]


def test_tiny_decoder_ablation_end_to_end(tmp_path):
    """`eseg ablate decoder --train --seeds 2 --steps 4` on a tiny set: ESeg-Lite-S's encoder standing in for B1
    under both decoders, 64x64 crops."""
    pytest.importorskip("eseg_cli.engine.trainer")
    root = _tiny_data(tmp_path)
    sets = [x for k, v in {**TINY_TRAIN, "eval_interval": 2}.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    recipe = Path(__file__).parents[1] / "reports" / "ablate" / "protocol-v1.yaml"  # the committed protocol's
    args = ["ablate", "decoder", "-s", "lite-s", "--train", "--seeds", "2", "--steps", "4", "-r", "64x64",
            "--protocol", "protocol v1", "--recipe", str(recipe), "--data-root", str(root),
            "--cell", "b1-bifpn", "--cell", "b1-deeplab-os32", "-o", str(tmp_path / "out"), "--json", *sets]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [(r["cell"], r["seed"]) for r in out["rows"]] == [("b1-bifpn", 0), ("b1-deeplab-os32", 0),
                                                             ("b1-bifpn", 1), ("b1-deeplab-os32", 1)]
    bifpn, deeplab = out["rows"][:2]
    assert bifpn["model"] == "eseg-lite-s" and bifpn["model_kwargs"] == {"channels": 96, "repeats": 4, "act": "silu"}
    assert deeplab["model_kwargs"]["encoder"] == "eseg-lite-s" and deeplab["label"].startswith("ESeg-Lite-S encoder")
    assert bifpn["paper_miou"] is None  # a stand-in is not Table 8's B1 row
    assert bifpn["options"] == {"scale": "eseg-lite-s", "aspp_scale": None, "decoder_norm": None}
    (agg,) = out["aggregate"]
    # 4 of the protocol's 1500 steps: a smoke run, never evidence
    assert agg["smoke"] and agg["setting"].startswith("smoke (synthetic, 4 steps, 2 seeds)")
    assert bifpn["train"]["protocol"] == "protocol v1" and bifpn["train"]["protocol_steps"] == 1500
    for c in agg["cells"]:
        vals = [r["final_miou"] for r in out["rows"] if r["cell"] == c["cell"]]
        assert c["n"] == 2 and c["mean"] == pytest.approx(sum(vals) / 2) and c["seeds"] == [0, 1]
    # the decoder's claims on these rows: none is evidence (a smoke run), each says why
    assert [c["key"] for c in out["claims"]] == [f"table8:b1-{a}>b1-{b}" for a, b in (
        ("bifpn", "deeplab-os16"), ("deeplab-os16", "deeplab-os32"), ("bifpn", "deeplab-os32"))] + [
        f"table8:r50-{a}>r50-{b}" for a, b in (("bifpn", "deeplab-os16"), ("deeplab-os16", "deeplab-os32"),
                                                ("bifpn", "deeplab-os32"))]
    assert out["claims"][2]["verdict"] == "not measured" and out["claims"][2]["setting"].startswith("only smoke")
    lines = (tmp_path / "out" / "decoder" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x)["prev_step"] == 2 for x in lines)
    res = runner.invoke(app, args[:-len(sets) - 1] + sets)  # again, the table: every pair skipped
    assert res.exit_code == 0 and "± " in res.output and res.output.count("skipped") == 4
    assert "BiFPN > DeepLabV3+ w/o atrous (paper +1.3 on Cityscapes): no verdict (only smoke" in \
        " ".join(res.output.split())


def test_stand_in_decoder_cells_of_one_seed_start_from_one_encoder():
    """Paired cells share more than data order: under one seed, both decoders get the same encoder weights."""
    import torch

    from eseg_cli.models import build_model

    encoders = []
    for c in ablate.cells_for("decoder", "lite-s"):
        torch.manual_seed(3)  # what the trainer does just before it builds the model
        encoders.append(build_model(c.model, num_classes=19, **c.kwargs).encoder.state_dict())
    first = encoders[0]
    assert all(list(e) == list(first) and all(torch.equal(e[k], first[k]) for k in first) for e in encoders[1:])


def test_decoder_norm_and_aspp_scale_apply_to_every_cell(tmp_path):
    import torch

    from eseg_cli.models import build_model

    rows = ablate.run_ablation("decoder", tmp_path, scale="lite-s", resolution=(64, 64), decoder_norm="group",
                               aspp_scale=0.5)
    assert {r["model_kwargs"]["decoder_norm"] for r in rows} == {"group"}
    assert [r["model_kwargs"].get("aspp_rates") for r in rows] == [None, [3, 6, 9], [2, 3, 4]]
    for r in rows:
        net = build_model(r["model"], num_classes=19, **r["model_kwargs"]).train()
        assert net.config["decoder_norm"] == "group"
        norms = [type(m) for part in (net.decoder, net.head) for m in part.modules()
                 if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
        assert norms and set(norms) == {torch.nn.GroupNorm}  # the encoder keeps its batch norm
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 19, 64, 64)
    with pytest.raises(EsegError, match="decoder_norm"):
        ablate.run_ablation("levels", tmp_path, scale="lite-s", decoder_norm="layer")
    with pytest.raises(EsegError, match="aspp"):
        ablate.run_ablation("levels", tmp_path, scale="lite-s", aspp_scale=0.5)
    res = runner.invoke(app, ["ablate", "decoder", "-s", "lite-s", "--aspp-scale", "0", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--aspp-scale must be > 0" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("line, says", [
    ('{"cell": "sum", "seed": 0, "final_miou": NaN}', "final_miou is nan"),
    ('{"cell": "sum", "seed": 0, "final_miou": 50.0, "flops": Infinity}', "flops is inf"),
    ('[1, 2]', "not a results row"),
])
def test_read_results_refuses_rows_that_are_not_measurements(tmp_path, line, says):
    f = tmp_path / "results.jsonl"
    f.write_text('{"cell": "sum", "seed": 1, "final_miou": 51.0}\n' + line + "\n")
    with pytest.raises(EsegError, match=f"line 2.*{says}|line 2 is {says}"):
        ablate.read_results(f)
