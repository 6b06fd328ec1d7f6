"""``eseg predict`` and ``eseg export``: what they write, their checks, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eseg_cli import build_model
from eseg_cli.cli import app
from eseg_cli.data.classes import TRAINID_TO_LABELID
from eseg_cli.engine.checkpoint import save_checkpoint
from eseg_cli.inference import Predictor

TINY = dict(width=0.25, depth=0.25, channels=16, repeats=1)
runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("lite-s", num_classes=19, **TINY).eval()
    with torch.no_grad():  # a less uniform prediction than a fresh init gives
        model.head.classifier[1].bias.copy_(torch.linspace(-1, 1, 19))
        model.head.classifier[1].weight.mul_(50)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint({"model": model.state_dict(), "model_config": model.config, "config": {"dataset": "cityscapes"},
                     "step": 1, "classes": None}, run / "checkpoints" / "best.pt")
    return run


@pytest.fixture()
def images(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(src / "sub" / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(src / "sub" / "c.png")
    return src


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_predict_writes_what_it_says(run_dir, images, tmp_path, one_thread):
    out = tmp_path / "out"
    res = invoke("predict", "-c", run_dir, images, "--out", out, "--confidence", "--batch-size", "2", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["images"] == 3 and summary["files_per_image"] == ["color", "confidence", "label", "overlay"]
    assert abs(sum(summary["class_histogram"].values()) - 1) < 1e-4
    p = Predictor(run_dir, device="cpu")
    for rel in ("a", "sub/b", "sub/c"):
        src = next(images.glob(rel + ".*"))
        label = np.array(Image.open(out / f"{rel}.png"))
        assert label.shape == np.array(Image.open(src)).shape[:2] and label.dtype == np.uint8
        assert (label == p.predict(src)).mean() > 0.999
        color = np.array(Image.open(out / f"{rel}_color.png"))
        np.testing.assert_array_equal(color, np.asarray(p.palette, np.uint8)[label])
        assert np.array(Image.open(out / f"{rel}_overlay.jpg")).shape == (*label.shape, 3)
        conf = np.array(Image.open(out / f"{rel}_confidence.png"))
        assert conf.shape == label.shape and conf.min() >= 255 // 19  # the winner has at least 1/C


def test_predict_labelids_glob_and_no_overlay(run_dir, images, tmp_path, one_thread):
    out = tmp_path / "out"
    res = invoke("predict", "-c", run_dir, str(images / "sub" / "*.png"), "--out", out, "--ids", "labelid",
                 "--no-overlay", "--json")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["c.png", "c_color.png"]
    train = Predictor(run_dir, device="cpu").predict(images / "sub" / "c.png")
    label = np.array(Image.open(out / "c.png"))
    expected = np.vectorize(TRAINID_TO_LABELID.get)(train)
    assert (label == expected).mean() > 0.999 and set(np.unique(label)) <= set(TRAINID_TO_LABELID.values())


def test_predict_does_not_overwrite_without_yes(run_dir, images, tmp_path):
    out = tmp_path / "out"
    assert invoke("predict", "-c", run_dir, images / "a.png", "--out", out).exit_code == 0
    res = invoke("predict", "-c", run_dir, images / "a.png", "--out", out)
    assert res.exit_code == 2 and "already exist" in res.output and "Traceback" not in res.output
    assert invoke("predict", "-c", run_dir, images / "a.png", "--out", out, "--yes").exit_code == 0


@pytest.mark.parametrize("case", ["empty folder", "unreadable image", "out is a file", "missing input",
                                  "no model", "bad glob", "not an image"])
def test_predict_bad_inputs_exit_2_with_one_line(case, run_dir, images, tmp_path):
    args = ["predict", "-c", run_dir, images, "--out", tmp_path / "out"]
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        args[3] = tmp_path / "empty"
    elif case == "unreadable image":
        (images / "broken.png").write_bytes(b"not a png")
    elif case == "out is a file":
        (tmp_path / "out").write_text("x")
    elif case == "missing input":
        args[3] = tmp_path / "nope.png"
    elif case == "no model":
        args = ["predict", images, "--out", tmp_path / "out"]
    elif case == "bad glob":
        args[3] = str(tmp_path / "*.tif")
    elif case == "not an image":
        (tmp_path / "notes.txt").write_text("x")
        args[3] = tmp_path / "notes.txt"
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert res.output.strip().startswith("Error:") and "Traceback" not in res.output


def _video(path: Path, frames: int = 3) -> Path:
    """A ``frames``-frame 64x48 mp4 of random pixels (skips where this OpenCV cannot write mp4v)."""
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write mp4v videos")
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path


def test_predict_video_writes_an_overlay_video(run_dir, tmp_path, one_thread):
    cv2 = pytest.importorskip("cv2")
    video = _video(tmp_path / "clip.mp4")
    res = invoke("predict", "-c", run_dir, video, "--out", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)["videos"][0]
    assert info["frames"] == 3
    cap = cv2.VideoCapture(info["out"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64
    cap.release()


# ------------------------------------------------------------------------------------------- outputs (issue 20)

def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def _clash_color_name(images, tmp_path):  # street_color.png is also street.png's colour mask
    Image.open(images / "a.png").save(images / "a_color.png")
    return [images / "a.png", images / "a_color.png"], tmp_path / "out", "a_color.png"


def _clash_two_folders(images, tmp_path):  # two a.png from two folders given as files
    (tmp_path / "other").mkdir()
    Image.open(images / "a.png").save(tmp_path / "other" / "a.png")
    return [images / "a.png", tmp_path / "other" / "a.png"], tmp_path / "out", "a.png"


def _clash_case_only(images, tmp_path):  # A.png and a.png clash on case-insensitive file systems
    (tmp_path / "other").mkdir()
    Image.open(images / "a.png").save(tmp_path / "other" / "A.png")
    return [images / "a.png", tmp_path / "other" / "A.png"], tmp_path / "out", "A.png"


def _out_is_the_input_folder(images, tmp_path):
    return [images], images, str(images)


def _out_inside_the_input_folder(images, tmp_path):
    return [images], images / "preds", str(images / "preds")


def _input_inside_the_out_folder(images, tmp_path):
    return [str(tmp_path / "**" / "*.png")], tmp_path, "inside the output folder"


@pytest.mark.parametrize("make", [_clash_color_name, _clash_two_folders, _clash_case_only, _out_is_the_input_folder,
                                  _out_inside_the_input_folder, _input_inside_the_out_folder])
def test_outputs_never_clash_or_land_among_the_inputs(make, run_dir, images, tmp_path):
    inputs, out, needle = make(images, tmp_path)
    before = _snapshot(tmp_path)
    res = invoke("predict", "-c", run_dir, *inputs, "--out", out, "--yes")
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(errors) == 1 and needle in errors[0], res.output
    assert _snapshot(tmp_path) == before  # refused before writing anything


def test_two_videos_of_one_name_are_refused_before_writing(run_dir, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "clip.mp4").write_bytes(b"not read: refused first")
    res = invoke("predict", "-c", run_dir, tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4", "--out",
                 tmp_path / "out")
    assert res.exit_code == 2 and "clip_overlay.mp4" in res.output and not (tmp_path / "out").exists()


def test_a_predict_into_a_folder_in_use_is_refused(run_dir, images, tmp_path):
    from eseg_cli.utils import folder_lock

    out = tmp_path / "out"
    with folder_lock(out, "busy"):  # another process predicting into it (flock: per open file, so this works)
        res = invoke("predict", "-c", run_dir, images, "--out", out)
    assert res.exit_code == 2 and "in use by another eseg predict" in res.output
    assert not _snapshot(out)


@pytest.mark.slow
def test_two_predict_processes_into_one_folder(run_dir, images, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "eseg_cli", "predict", "-c", str(run_dir), str(images), "--out", str(out),
           "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results  # one writes; the other waits its turn and finds the outputs, or is refused
    refused = next(err for c, err in results if c == 2)
    assert "in use by another eseg predict" in refused or "already exist" in refused
    p = Predictor(run_dir, device="cpu")
    for rel in ("a", "sub/b", "sub/c"):  # the outputs are one run's, whole
        assert (np.array(Image.open(out / f"{rel}.png")) == p.predict(next(images.glob(rel + ".*")))).mean() > 0.999


def test_ctrl_c_during_a_video_leaves_no_partial_file(run_dir, tmp_path, monkeypatch):
    from eseg_cli.inference import files

    video = _video(tmp_path / "clip.mp4")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "_overlay_frames", interrupted)
    res = invoke("predict", "-c", run_dir, video, "--out", tmp_path / "out")
    assert res.exit_code == 130 and "0 of 1 videos" in res.output and "--yes" in res.output, res.output
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name != ".lock"]


@pytest.mark.parametrize("failure, needle", [
    ("cxx", "a working C++ compiler"),
    ("triton", "triton"),
])
def test_compile_without_its_toolchain_says_what_is_missing(failure, needle, run_dir, images, tmp_path, monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InvalidCxxCompiler

    inner = InvalidCxxCompiler() if failure == "cxx" else RuntimeError("Cannot find a working triton installation.")

    def compiled_without_toolchain(fn, **kw):
        def call(*a, **k):
            raise BackendCompilerFailed(lambda: None, inner, None)
        return call

    monkeypatch.setattr(torch, "compile", compiled_without_toolchain)
    res = invoke("predict", "-c", run_dir, images, "--out", tmp_path / "out", "--compile", "--device", "cpu")
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(errors) == 1 and needle in errors[0] and "without --compile" in errors[0], res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compile_with_no_cxx_compiler_for_real(run_dir, images, tmp_path, monkeypatch, one_thread):
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    # the config's own patch: monkeypatch's undo deletes a sub-config entry (cpp.cxx then "does not exist" for every
    # later compilation in the process)
    with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}):
        res = invoke("predict", "-c", run_dir, images / "a.png", "--out", tmp_path / "out", "--compile", "--device",
                     "cpu")
    assert res.exit_code == 2 and "C++ compiler" in res.output and "Traceback" not in res.output, res.output


# ------------------------------------------------------------------------------------------- export

SIZES = "96x160,75x101"  # the second is not a multiple of 32


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".ts"), ("pt2", ".pt2")])
def test_export_matches_pytorch_at_two_sizes(fmt, suffix, run_dir, tmp_path, one_thread):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'eseg[deploy]'")
        pytest.importorskip("onnx", reason="the deploy extra is not installed: pip install 'eseg[deploy]'")
    from eseg_cli.inference.export import load_exported, read_metadata

    out = tmp_path / f"model{suffix}"
    res = invoke("export", "-c", run_dir, "--format", fmt, "--out", out, "--check-sizes", SIZES, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    checks = result["checks"]
    assert [c["size"] for c in checks][:2] == ["96x160", "75x101"] and result["dynamic"] == "batch, height, width"
    assert all(c["argmax_agreement"] >= 0.999 and c["max_abs_diff"] < 1e-3 for c in checks)
    meta = read_metadata(out)
    assert json.loads(meta["class_names"])[0] == "road" and len(json.loads(meta["palette"])) == 19
    assert json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    # run it here too, at sizes it was not traced at (every format: any size and batch; pt2 from 32 per side)
    p = Predictor(run_dir, device="cpu", channels_last=False)
    run = load_exported(out)
    for b, h, w in [(2, 96, 160), (1, 75, 101), (1, 600, 300), (3, 33, 47)]:
        x = torch.randn(b, 3, h, w)
        np.testing.assert_allclose(run(x.numpy()), p.logits(x).numpy(), atol=1e-4, rtol=1e-4)
    # a second export to the same file asks first
    again = invoke("export", "-c", run_dir, "--format", fmt, "--out", out, "--check-sizes", SIZES)
    assert again.exit_code == 2 and "already exists" in again.output


def test_predict_through_onnx_matches_pytorch(run_dir, images, tmp_path, one_thread):
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'eseg[deploy]'")
    model = tmp_path / "m.onnx"
    assert invoke("export", "-c", run_dir, "--out", model, "--check-sizes", SIZES).exit_code == 0
    res = invoke("predict", "--onnx", model, images, "--out", tmp_path / "out", "--no-overlay", "--json")
    assert res.exit_code == 0, res.output
    p = Predictor(run_dir, device="cpu")
    label = np.array(Image.open(tmp_path / "out" / "a.png"))
    assert (label == p.predict(images / "a.png")).mean() > 0.999
    # settings that only a checkpoint can take are refused, not ignored
    res = invoke("predict", "--onnx", model, images, "--out", tmp_path / "out2", "--amp", "bf16")
    assert res.exit_code == 2 and "--amp" in res.output and not (tmp_path / "out2").exists()


def test_export_without_the_deploy_extra_says_how_to_install(run_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    res = invoke("export", "-c", run_dir, "--out", tmp_path / "m.onnx")
    assert res.exit_code == 2 and "eseg[deploy]" in res.output


def test_export_rejects_a_folder_and_bad_sizes(run_dir, tmp_path):
    assert invoke("export", "-c", run_dir, "--out", tmp_path, "-f", "torchscript").exit_code == 2
    res = invoke("export", "-c", run_dir, "--out", tmp_path / "m.ts", "-f", "torchscript", "--check-sizes", "axb")
    assert res.exit_code == 2 and "HEIGHTxWIDTH" in res.output


def test_predict_reports_progress_through_events(run_dir, images, tmp_path, one_thread):
    """Images and video frames report progress as every long task does (events.py), not through callbacks of
    their own."""
    from eseg_cli.inference import files

    predictor = Predictor(run_dir, device="cpu")
    inputs, _ = files.collect_inputs([images])
    events = []
    files.predict_images(predictor, inputs, tmp_path / "out", on_event=events.append, batch_size=2)
    assert [(e.kind, e.task, e.step, e.total) for e in events] == [
        ("start", "predict", 0, 3), ("advance", "predict", 1, 3), ("advance", "predict", 2, 3),
        ("advance", "predict", 3, 3), ("end", "predict", 3, 3)]
    assert [e.item for e in events if e.kind == "advance"] == [stem for _, stem in inputs]
    events.clear()
    files.predict_video(predictor, _video(tmp_path / "clip.mp4"), tmp_path / "out", on_event=events.append)
    assert [(e.kind, e.step) for e in events] == [("start", 0), ("advance", 1), ("advance", 2), ("advance", 3),
                                                  ("end", 3)]
    assert {e.task for e in events} == {"video"} and {e.item for e in events} == {"clip.mp4"}


# ------------------------------------------------------------------------------------------- bf16 support line

@pytest.mark.parametrize("avx512_bf16, amx, needle", [
    (True, False, "with AVX512-BF16: predicting in float32; --amp bf16 runs natively here"),
    (True, True, "with AVX512-BF16 + AMX: predicting in float32"),
    (False, False, "without AVX512-BF16 or AMX: predicting in float32 (bf16 would be emulated"),
])
def test_predict_and_profile_name_the_bf16_support_found(avx512_bf16, amx, needle, run_dir, images, tmp_path,
                                                         monkeypatch, one_thread):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    capability = torch.backends.cpu.get_cpu_capability()
    res = invoke("predict", "-c", run_dir, images / "a.png", "--out", tmp_path / "out", "--device", "cpu")
    assert res.exit_code == 0 and f"CPU: {capability} {needle}" in res.output.replace("\n", " "), res.output
    res = invoke("predict", "-c", run_dir, images / "a.png", "--out", tmp_path / "j", "--device", "cpu", "--json")
    summary = json.loads(res.stdout)
    assert summary["cpu_bf16"] == {"capability": capability, "avx512_bf16": avx512_bf16, "amx_bf16": amx,
                                   "native": avx512_bf16 or amx}
    res = invoke("profile", "-s", "lite-s", "-r", "64x64", "--no-flops", "--runs", "1", "--warmup", "0",
                 "--device", "cpu", "--json")
    prof = json.loads(res.stdout)
    assert prof["cpu_bf16"]["avx512_bf16"] == avx512_bf16 and prof["cpu_bf16"]["amx_bf16"] == amx
    assert needle.replace("predicting", "timing") in prof["precision_note"]
    if not (avx512_bf16 or amx):  # asking for bf16 there is warned about
        res = invoke("predict", "-c", run_dir, images / "a.png", "--out", tmp_path / "w", "--device", "cpu",
                     "--amp", "bf16")
        assert res.exit_code == 0 and "Warning: CPU:" in res.output and "emulated" in res.output, res.output


# ------------------------------------------------------------------------------------------- predict --compile

@pytest.fixture()
def mixed_sizes(tmp_path) -> Path:
    """Three images of three sizes whose pyramids differ at the top (P9 1x1, 1x2, 1x2; P8 2x2, 2x3, 2x3)."""
    return _images(tmp_path / "mixed", [(470, 480), (300, 520), (400, 700)])


def _images(src: Path, sizes) -> Path:
    rng = np.random.default_rng(0)
    src.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / f"{i}.png")
    return src


def _predict_compiled_counting_graphs(run_dir, images, out):
    """Graphs the model compiled in ``predict --compile`` over ``images``; the post-processing's compiled argmax
    (``postprocess.argmax_rows``, one graph for every size) is checked to have compiled once and not counted."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch._dynamo.utils import counters

    from eseg_cli.inference import postprocess

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    res = invoke("predict", "-c", run_dir, images, "--out", out, "--compile", "--device", "cpu", "--batch-size", "1",
                 "--no-overlay", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["compile"] == "dynamic"
    argmax_graphs = len(_debug_get_cache_entry_list(postprocess._first_max.__code__))
    assert argmax_graphs == 1
    return counters["stats"]["unique_graphs"] - before - argmax_graphs


def _labels_match_eager(run_dir, images, out):
    p = Predictor(run_dir, device="cpu")
    for src in sorted(images.glob("*.png")):
        assert (np.array(Image.open(out / src.name)) == p.predict(src)).mean() > 0.999


def test_predict_compile_traces_one_graph_for_mixed_sizes(run_dir, mixed_sizes, tmp_path, monkeypatch, one_thread):
    """dynamo's tracing (where every guard, hence every recompilation, comes from) through dynamo's eager backend:
    the model's size comparisons would each add one; with symbolic sizes it resamples by level instead."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager", **kw))
    assert _predict_compiled_counting_graphs(run_dir, mixed_sizes, tmp_path / "out") == 1
    _labels_match_eager(run_dir, mixed_sizes, tmp_path / "out")


@pytest.mark.slow
def test_predict_compile_compiles_once_for_mixed_sizes(run_dir, tmp_path, one_thread):
    """Through inductor, as `predict --compile` runs (minutes on 2 busy cores). Its re-trace adds torch's own
    guard on the top level's maps being one pixel high or wide (see ``compile_inference``): one graph serves
    sizes from 257 to 512 pixels a side here."""
    images = _images(tmp_path / "in", [(470, 480), (300, 400), (400, 300)])
    assert _predict_compiled_counting_graphs(run_dir, images, tmp_path / "out") == 1
    _labels_match_eager(run_dir, images, tmp_path / "out")


def test_predict_compile_is_static_for_one_size_dynamic_for_mixed(images, mixed_sizes, tmp_path):
    from eseg_cli.inference.files import mixed_sizes as is_mixed

    same = sorted((images / "sub").glob("*"))  # b.jpg and c.png, both 40x64
    assert not is_mixed(same, []) and is_mixed(sorted(mixed_sizes.glob("*.png")), [])
    assert is_mixed([images / "a.png", same[0]], [])  # 37x53 beside 40x64
    assert is_mixed(same, [tmp_path / "clip.mp4"])  # a video's frames: another size, unread
    rotated = tmp_path / "rotated.jpg"  # stored 64 high x 40 wide, shown 40 x 64 as the others: one size
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.new("RGB", (40, 64)).save(rotated, exif=exif)
    assert not is_mixed(same + [rotated], [])


def test_predict_runs_the_inference_modes_of_eval(run_dir, images, tmp_path, one_thread):
    """--mode msflip / slide: the Predictor's modes, as eseg eval runs them; slide without --crop takes the run's
    training crop from its config, and is refused (one line) where the checkpoint records none."""
    out = tmp_path / "ms"
    res = invoke("predict", "-c", run_dir, images, "--out", out, "--mode", "msflip", "--scales", "0.75,1.0",
                 "--no-overlay", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["inference"]["mode"] == "msflip"
    ms = Predictor(run_dir, device="cpu", mode="msflip", scales=(0.75, 1.0))
    for rel in ("a", "sub/b"):
        label = np.array(Image.open(out / f"{rel}.png"))
        assert (label == ms.predict(next(images.glob(rel + ".*")))).mean() > 0.999

    res = invoke("predict", "-c", run_dir, images, "--out", tmp_path / "slide0", "--mode", "slide")
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "crop" in errors[0], res.output

    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"] = {**ckpt["config"], "crop_size": [32, 32]}
    with_crop = tmp_path / "with_crop"
    save_checkpoint(ckpt, with_crop / "checkpoints" / "best.pt")
    res = invoke("predict", "-c", with_crop, images / "a.png", "--out", tmp_path / "slide", "--mode", "slide",
                 "--no-overlay", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["inference"]["crop"] == [32, 32]
    slide = Predictor(run_dir, device="cpu", mode="slide", crop=(32, 32))
    label = np.array(Image.open(tmp_path / "slide" / "a.png"))
    assert (label == slide.predict(images / "a.png")).mean() > 0.999
