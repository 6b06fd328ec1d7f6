"""``eseg prepare-data`` (cityscapes, ade20k, synthetic) and ``eseg browse``: datasets made training-ready
and looked at."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from eseg_cli.cli._app import app
from eseg_cli.cli._common import (
    THREADS_HELP,
    EsegTyper,
    confirm_overwrite,
    console,
    print_json,
    set_threads,
)
from eseg_cli.cli._progress import ProgressReporter, use_bar

prepare_app = EsegTyper(
    name="prepare-data",
    rich_markup_mode="rich",
    no_args_is_help=True,
)
app.add_typer(prepare_app, name="prepare-data", rich_help_panel="Data")


@prepare_app.callback()
def _prepare_root():
    """Make datasets training-ready: check Cityscapes / ADE20K, or generate the synthetic set.

    Examples:

      [cyan]eseg prepare-data cityscapes --root data/cityscapes --workers 8[/]

      [cyan]eseg prepare-data ade20k --root data/ade[/]

      [cyan]eseg prepare-data synthetic --out data/synthetic --num-train 400 --num-val 100 --size 256x512[/]
    """


def _workers(workers: Optional[int]) -> int:
    from eseg_cli.data.prepare import default_workers

    return default_workers() if workers is None else workers


def _print_summary(summary: dict, title: str) -> None:
    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in summary.items():
        if k in ("class_pixels", "params"):
            continue
        if isinstance(v, list):
            v = f"{len(v)}: " + ", ".join(map(str, v))
        elif isinstance(v, dict):
            v = "; ".join(f"{a}: " + (", ".join(f"{n} {k}" for k, n in b.items()) if isinstance(b, dict) else str(b))
                          for a, b in v.items())
        t.add_row(k.replace("_", " "), str(v))
    console.print(t)


def _maybe_preview(name: str, root, n: Optional[int], out: Optional[Path], split: str, yes: bool,
                   summary: dict, json_out: bool, crop=None) -> None:
    if not n:
        return
    from eseg_cli.data.preview import preview_grid

    out = _preview_path(root, out, split)
    ds = _browse_dataset(name, root, split, True, crop)
    res = preview_grid(ds, n, out, title=f"{name} {split} (train augmentations)")
    summary["preview"] = res["path"]
    if not json_out:
        console.print(f"preview of {len(res['indices'])} samples written to [bold]{res['path']}[/]")


def _preview_path(root, out: Optional[Path], split: str) -> Path:
    return out or Path(root) / f"eseg_preview_{split}.png"


def _browse_dataset(name: str, root, split: str, augment: bool, crop, seed: int = 0):
    """The dataset with the augmentations its recipe trains with (``crop`` replaces the recipe's crop)."""
    from eseg_cli.data import build_dataset, build_transforms
    from eseg_cli.engine import load_config

    cfg = load_config(name)
    tf = build_transforms(augment, crop_size=tuple(crop or cfg.crop_size), scale_range=tuple(cfg.scale_range),
                          hflip=cfg.hflip, photometric=cfg.photometric, seed=seed)
    return build_dataset(name, root, split, tf)


_PREVIEW = typer.Option(None, "--preview", min=1, help="Also write a grid of N augmented training samples "
                        "with their labels overlaid.")
_PREVIEW_OUT = typer.Option(None, "--preview-out", help="Where the preview PNG goes (default: in the root).")
_YES = typer.Option(False, "--yes", "-y", help="Overwrite an existing preview without asking.")
_JSON = typer.Option(False, "--json", help="Print the summary as JSON (progress goes to stderr).")
_WORKERS = typer.Option(None, "--workers", "-j", min=1, help="Parallel worker processes (default: CPUs, <= 8).")


@prepare_app.command("cityscapes")
def cityscapes_cmd(
    root: Path = typer.Option(..., "--root", help="Cityscapes root holding leftImg8bit/ and gtFine/."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Only these splits (repeatable); "
                                              "default: every split present."),
    workers: Optional[int] = _WORKERS,
    force: bool = typer.Option(False, "--force", help="Redo outputs that are already up to date."),
    preview: Optional[int] = _PREVIEW,
    preview_out: Optional[Path] = _PREVIEW_OUT,
    yes: bool = _YES,
    json_out: bool = _JSON,
):
    """Check a Cityscapes root and write trainIds labels beside the official ones.

    Writes [bold]*_gtFine_labelTrainIds.png[/] (19 classes, ignore 255) beside each label.

    Source: *_gtFine_labelIds.png, or *_gtFine_polygons.json where only those exist.

    Up-to-date outputs are skipped ([bold]--force[/] redoes them); every output is written atomically.

    Examples:

      [cyan]eseg prepare-data cityscapes --root data/cityscapes --workers 8[/]

      [cyan]eseg prepare-data cityscapes --root data/cityscapes --split val --preview 8 --json[/]
    """
    from eseg_cli.data.prepare import prepare_cityscapes

    pv_split = split[0] if split else ("train" if (root / "leftImg8bit" / "train").is_dir() else "val")
    if preview:
        confirm_overwrite(_preview_path(root, preview_out, pv_split), yes, "the preview")
    with ProgressReporter(bar=use_bar(), quiet=json_out) as on_event:
        summary = prepare_cityscapes(root, splits=split or None, workers=_workers(workers), force=force,
                                     on_event=on_event)
    _maybe_preview("cityscapes", root, preview, preview_out, pv_split, yes, summary, json_out)
    if json_out:
        print_json(summary)
    else:
        _print_summary(summary, "eseg prepare-data cityscapes")


@prepare_app.command("ade20k")
def ade20k_cmd(
    root: Path = typer.Option(..., "--root", help="ADEChallengeData2016, or the folder holding it."),
    workers: Optional[int] = _WORKERS,
    preview: Optional[int] = _PREVIEW,
    preview_out: Optional[Path] = _PREVIEW_OUT,
    yes: bool = _YES,
    json_out: bool = _JSON,
):
    """Check an ADE20K SceneParsing copy and report counts.

    Checks [bold]ADEChallengeData2016/{images,annotations}/{training,validation}[/]: pairs, sizes, values.

    Reduce-zero-label (0 → ignore, k → k-1) is applied by the [bold]ade20k[/] dataset, so nothing is written.

    Examples:

      [cyan]eseg prepare-data ade20k --root data/ade --workers 8[/]

      [cyan]eseg prepare-data ade20k --root data/ade/ADEChallengeData2016 --json[/]
    """
    from eseg_cli.data.prepare import prepare_ade20k

    if preview and preview_out:
        confirm_overwrite(preview_out, yes, "the preview")
    with ProgressReporter(bar=use_bar(), quiet=json_out) as on_event:
        summary = prepare_ade20k(root, workers=_workers(workers), on_event=on_event)
    pv_split = "train" if "train" in summary["splits"] else "val"
    _maybe_preview("ade20k", summary["root"], preview, preview_out, pv_split, yes, summary, json_out)
    if json_out:
        print_json(summary)
    else:
        _print_summary(summary, "eseg prepare-data ade20k")


@prepare_app.command("mapillary")
def mapillary_cmd(
    root: Path = typer.Option(..., "--root", help="The Mapillary Vistas root (training/, validation/, "
                                                  "config_v1.2.json)."),
    workers: Optional[int] = _WORKERS,
    json_out: bool = _JSON,
):
    """Check a Mapillary Vistas v1.2 copy and report counts.

    Checks [bold]training|validation/images/*.jpg[/] against [bold].../v1.2/labels/*.png[/] (or v1.2's
    [bold].../labels[/]) and the labels in [bold]config_v1.2.json[/] (or [bold]config.json[/]): pairs, sizes,
    values.

    Train on its 65 classes with [bold]-d mapillary[/], or on Cityscapes' 19 trainIds with
    [bold]-d mapillary-cityscapes[/] (to pretrain a Cityscapes model), so nothing is written.

    Examples:

      [cyan]eseg prepare-data mapillary --root data/mapillary --workers 8[/]
    """
    from eseg_cli.data.prepare import prepare_mapillary

    with ProgressReporter(bar=use_bar(), quiet=json_out) as on_event:
        summary = prepare_mapillary(root, workers=_workers(workers), on_event=on_event)
    if json_out:
        print_json(summary)
    else:
        _print_summary(summary, "eseg prepare-data mapillary")


@prepare_app.command("synthetic")
def synthetic_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to generate into (Cityscapes layout)."),
    num_train: int = typer.Option(400, "--num-train", min=0, help="Training images."),
    num_val: int = typer.Option(100, "--num-val", min=0, help="Validation images."),
    size: str = typer.Option("256x512", "--size", help="Image size HxW."),
    seed: int = typer.Option(0, "--seed", help="Random seed; a seed always gives the same set."),
    workers: Optional[int] = _WORKERS,
    force: bool = typer.Option(False, "--force", help="Regenerate existing samples, or a set made with "
                               "other parameters."),
    preview: Optional[int] = _PREVIEW,
    preview_out: Optional[Path] = _PREVIEW_OUT,
    yes: bool = _YES,
    json_out: bool = _JSON,
):
    """Generate the built-in synthetic street-scene dataset.

    Street scenes with the 19 Cityscapes trainIds, written in the Cityscapes layout.

    Deterministic for a seed; samples already on disk are kept (generation is deterministic).

    The default (400 + 100 images at 256x512) is what [bold]eseg train[/] uses without a dataset.

    Examples:

      [cyan]eseg prepare-data synthetic --out data/synthetic[/]

      [cyan]eseg prepare-data synthetic --out data/syn-small --num-train 64 --num-val 16 --size 128x256[/]
    """
    from eseg_cli.data.synthetic import generate
    from eseg_cli.utils import parse_size

    hw = parse_size(size, "--size")
    if preview:
        confirm_overwrite(_preview_path(out, preview_out, "train" if num_train else "val"), yes, "the preview")
    with ProgressReporter(bar=use_bar(), quiet=json_out) as on_event:
        summary = generate(out, num_train=num_train, num_val=num_val, size=hw, seed=seed,
                           workers=_workers(workers), on_event=on_event, force=force)
    _maybe_preview("synthetic", out, preview, preview_out, "train" if num_train else "val", yes, summary,
                   json_out, crop=hw)
    if json_out:
        print_json(summary)
    else:
        _print_summary(summary, "eseg prepare-data synthetic")


@app.command("browse", rich_help_panel="Data")
def browse_cmd(
    dataset: str = typer.Argument("synthetic", help="cityscapes, ade20k, synthetic or folder."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root (synthetic: default set if omitted)."),
    split: str = typer.Option("train", "--split", help="train or val."),
    n: int = typer.Option(8, "--n", "-n", min=1, help="Number of samples in the grid."),
    out: Path = typer.Option(Path("preview.png"), "--out", "-o", help="PNG to write."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Show the training augmentations "
                                 "(scale, crop, flip, colour jitter) or the plain images."),
    crop: Optional[str] = typer.Option(None, "--crop", help="Training crop HxW (default: the dataset's)."),
    seed: int = typer.Option(0, "--seed", help="Which samples (and augmentations) are drawn."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    yes: bool = _YES,
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
):
    """Write a preview grid of samples with their labels overlaid in colour.

    Shows what the model will be fed: training augmentations included unless [bold]--no-augment[/].

    Examples:

      [cyan]eseg browse synthetic --n 8 --out reports/synthetic_preview.png --yes[/]

      [cyan]eseg browse cityscapes --root data/cityscapes --split val --no-augment --n 4[/]
    """
    set_threads(threads)
    from eseg_cli.data.datasets import dataset_class
    from eseg_cli.errors import EsegError
    from eseg_cli.utils import parse_size

    name = dataset_class(dataset).name
    if root is None and name != "synthetic":
        raise EsegError(f"--root is required for {name} (only synthetic has a built-in default)")
    confirm_overwrite(out, yes, "the preview")
    from eseg_cli.data.preview import preview_grid

    ds = _browse_dataset(name, root, split, augment, parse_size(crop, "--crop") if crop else None, seed)
    res = preview_grid(ds, n, out, seed=seed,
                       title=f"{name} {split}" + (" (train augmentations)" if augment else ""))
    if json_out:
        print_json(res)
    else:
        console.print(f"wrote [bold]{res['path']}[/]: samples {res['indices']}; classes shown: "
                      f"{', '.join(res['classes'])}")
