"""`eseg ablate`: cells, measurements, the results file, resuming, training."""

from __future__ import annotations

import json

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
    rows = json.loads(res.stdout)
    assert [r["cell"] for r in rows] == ["sum"] and rows[0]["model_kwargs"]["fusion"] == "sum"
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
