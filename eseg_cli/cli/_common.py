"""What every command shares: the console, the error wrapper, JSON output, overwrite confirmation."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
import traceback
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer import rich_utils as typer_rich_utils
from typer.core import TyperOption

from eseg_cli.errors import EsegError, Interrupted, os_error_hint


def _console(stderr: bool = False) -> Console:
    """Rich console. Piped into a file or another program (no terminal, no ``COLUMNS``), rich would lay
    tables out in 80 columns and cut numbers short ("35.5…"); there it gets room for whole rows instead."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=160 if piped else None)


console = _console()
err_console = _console(stderr=True)

#: set by the root ``--debug`` flag; ``ESEG_DEBUG=1`` in the environment does the same
DEBUG = False

def debug_enabled() -> bool:
    """Whether tracebacks are shown (root ``--debug`` or ``ESEG_DEBUG`` set to anything but 0/empty)."""
    return DEBUG or os.environ.get("ESEG_DEBUG", "").strip() not in ("", "0", "false", "no")


def _worker_root_cause(msg: str) -> str:
    """A DataLoader re-raises a worker's exception with the worker's whole traceback in its message
    ("Caught X in DataLoader worker process 0. Original Traceback ... X: message"); keep the message."""
    if "Original Traceback" not in msg:
        return msg
    lines = msg.split("Original Traceback", 1)[1].splitlines()[1:]
    rest = [ln for ln in lines if ln and not ln.startswith(" ")]
    if not rest:
        return msg
    text = "\n".join(lines[lines.index(rest[0]):])
    return re.sub(r"^[\w.]+: ", "", text, count=1)  # "eseg_cli.errors.EsegError: ..." -> "..."


def _is_input_error(e: BaseException) -> bool:
    """Problems with the user's input or machine (exit 2), as opposed to bugs in eseg (exit 1)."""
    if isinstance(e, (EsegError, OSError, UnicodeError, MemoryError)):
        return True
    mod = type(e).__module__ or ""
    if mod.startswith("yaml"):  # yaml.YAMLError and its subclasses
        return True
    name = type(e).__name__
    if name == "OutOfMemoryError" or (isinstance(e, RuntimeError) and (
            "can't allocate memory" in str(e) or "out of memory" in str(e).lower())):
        return True
    return False


def option_flags(fn) -> dict[str, str]:
    """A command function's options by parameter name: ``{"data_root": "--data-root", ...}`` (long form); a name
    with a trailing ``_`` (``compile_``, kept off a builtin) also without it, as the library calls it."""
    flags = {}
    for name, p in inspect.signature(fn).parameters.items():
        infos = [p.default, *getattr(p.annotation, "__metadata__", ())]
        for info in infos:
            decls = [d for d in getattr(info, "param_decls", None) or () if d.startswith("-")] \
                if isinstance(info, typer.models.OptionInfo) else []
            if decls:
                flags[name] = next((d.split("/")[0] for d in decls if d.startswith("--")), decls[0])
                flags.setdefault(name.rstrip("_"), flags[name])  # compile_ (a builtin's name) is 'compile' too
    return flags


def in_cli_terms(e: EsegError, flags: dict[str, str]) -> str:
    """The message of a library error with each of its quoted ``fields`` written as the command's flag."""
    msg = str(e)
    for field in e.fields:
        if field in flags:
            msg = msg.replace(f"'{field}'", flags[field])
    return msg


def describe_error(e: BaseException, flags: dict[str, str] | None = None) -> tuple[str, int]:
    """``(one-line message, exit code)`` for an exception that escaped a command whose options are ``flags``."""
    msg = _worker_root_cause(in_cli_terms(e, flags or {}) if isinstance(e, EsegError) else str(e)).strip()
    if isinstance(e, EsegError):
        return " ".join(msg.split("\n")), e.exit_code
    kind = type(e).__name__
    if isinstance(e, OSError):
        hint = os_error_hint(e)
        if e.filename is not None and str(e.filename) not in msg:
            msg = f"{msg}: {e.filename}"
        if hint:
            msg = f"{msg}; {hint}"
    elif isinstance(e, UnicodeError):
        msg = f"{msg}; the file is not UTF-8 text (save it as UTF-8)"
    elif isinstance(e, MemoryError) or kind == "OutOfMemoryError":
        msg = f"{msg or 'out of memory'}; lower the size or batch size"
    msg = " ".join(line.strip() for line in msg.splitlines() if line.strip())
    if _is_input_error(e):
        return f"{kind}: {msg}", 2
    return (f"{kind}: {msg} — an internal error in eseg; rerun with --debug (or ESEG_DEBUG=1) for the "
            "traceback and report it", 1)


def run_guarded(fn, *a, flags: dict[str, str] | None = None, **k):
    """Call a command function; any exception becomes one red line on stderr and exit code 2 (input) or 1 (bug).
    ``flags`` (see :func:`option_flags`) turn the names that library errors quote into the command's flags."""
    try:
        return fn(*a, **k)
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise
    except Interrupted as e:  # stopped cleanly by SIGINT / SIGTERM, its state saved: say how to continue
        err_console.print(f"[yellow]{escape(str(e))}[/]" + (f"; to continue, {escape(e.resume)}" if e.resume else ""),
                          highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except Exception as e:  # noqa: BLE001 - the top of the command: every exception is reported here
        msg, code = describe_error(e, flags)
        if debug_enabled():
            traceback.print_exc(file=sys.stderr)
        err_console.print(f"[bold red]Error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


def _finite_options(fn):
    """``fn`` refusing a NaN or infinite value of any float option (click's ``min``/``max`` let NaN through:
    every comparison with it is false), before the command runs."""
    from eseg_cli.utils import check_finite

    @functools.wraps(fn)
    def checked(*a, **k):
        for name, v in k.items():
            check_finite(v, f"'{name}'", field=name)
        return fn(*a, **k)

    return checked


class EsegTyper(typer.Typer):
    """A Typer app whose commands turn any exception into a red one-line message: exit code 2 for input
    problems (:class:`EsegError`, OS errors, bad encodings or YAML, memory), 1 for bugs. ``--debug`` or
    ``ESEG_DEBUG=1`` prints the traceback too."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            flags = option_flags(fn)

            @functools.wraps(fn)
            def wrapper(*a, **k):
                return run_guarded(_finite_options(fn), *a, flags=flags, **k)

            register(wrapper)
            return fn

        return decorator


def parse_sets(items: list[str]) -> dict:
    """``["batch_size=2", "crop_size=[128,128]"]`` -> ``{"batch_size": 2, "crop_size": [128, 128]}``."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EsegError(f"--set {item!r}: use KEY=VALUE, e.g. --set batch_size=2")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise EsegError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())}); "
                            "quote strings, write lists as [a, b]") from None
    return out


def print_json(obj: Any) -> None:
    """Machine output: one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def confirm_overwrite(path: Path, yes: bool, what: str = "it") -> None:
    """Ask before overwriting ``path``; without a terminal, refuse unless ``--yes`` was given."""
    if yes or not path.exists():
        return
    if sys.stdin is not None and sys.stdin.isatty():
        if typer.confirm(f"{path} exists. Overwrite {what}?", default=False):
            return
        raise typer.Exit(1)
    raise EsegError(f"{path} already exists; pass --yes to overwrite {what}, or choose another output")


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


# ----------------------------------------------------------------------------- shared choices
# Enum choices give validation and shell completion; case-insensitive (`--cell P3-P7`). The values are written
# here, not imported, so that `eseg --help` needs no torch; tests/test_cli.py checks them against the ablation
# cells. Model names are not listed here: the registry (which needs torch) has them, so `--scale` takes any
# text, the library resolves it (an unknown name is one line naming --scale), and TAB asks the registry.
def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v.replace("-", "_").replace(".", "_"): v for v in values}, type=str)


MODES = _choices("Mode", ("whole", "slide", "msflip"))
AMPS = _choices("Amp", ("bf16", "fp16"))
HEADS = _choices("Head", ("exact", "coarse-to-fine"))  # inference.predictor.HEADS
TRAIN_AMPS = _choices("TrainAmp", ("bf16", "fp16", "auto", "none"))  # auto: inference.precision.resolve_amp
CELLS = _choices("Cell", ("b1-bifpn", "b1-deeplab-os16", "b1-deeplab-os32", "r50-bifpn", "r50-deeplab-os16",
                          "r50-deeplab-os32", "p3-p7", "p2-p7", "p3-p9", "p2-p9", "fastattn", "softmax", "sum",
                          "head-sum"))


def value(choice) -> Any:
    """An Enum choice (or None, or a plain value) as the plain value the library takes."""
    return choice.value if isinstance(choice, Enum) else choice


def complete_model(incomplete: str) -> list[str]:
    """Shell completion for --scale: the registered model names, and the ESeg family's without ``eseg-`` (imports
    the registry, so torch, only when TAB asks)."""
    from eseg_cli.models import list_models
    from eseg_cli.models.registry import FAMILY_PREFIX

    names = list_models()
    names += [n[len(FAMILY_PREFIX):] for n in names if n.startswith(FAMILY_PREFIX)]
    return [n for n in names if n.startswith(incomplete.lower())]


def complete_device(incomplete: str) -> list[str]:
    """Shell completion for --device (free text: cuda:N is valid too)."""
    return [d for d in ("auto", "cpu", "cuda", "cuda:0", "xla") if d.startswith(incomplete)]


def set_threads(threads: int | None) -> None:
    """--threads: torch's intra-op CPU threads (left to torch's default when not given)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


THREADS_HELP = "torch CPU threads (default: torch's own, one per core)."
PROFILES_HELP = ("FPS for Figure 4's measured panel: `eseg profile --json` output, a benchmark report "
                 "(benchmarks/peers.py) or a folder of them (repeatable).")


# A flag takes no value: typer (the releases that print types, with this hook) would still print its type
# (`<bool>`) in the help. Show none.
if hasattr(TyperOption, "display_type_rich"):
    def _display_type_rich(self, ctx, _orig=TyperOption.display_type_rich):
        return None if self.is_flag else _orig(self, ctx)

    TyperOption.display_type_rich = _display_type_rich


@functools.cache
def _recipe(name: str) -> dict:
    import yaml

    from eseg_cli import recipes

    return yaml.safe_load((files(recipes) / f"{name}.yaml").read_text()) or {}


def default_from_recipe(key: str, dataset: str = "synthetic") -> str:
    """Help text for a flag whose default is a recipe value: ``default: from the recipe (synthetic: 1500)``."""
    try:
        v = {**_recipe("base"), **_recipe(dataset)}.get(key)
    except (OSError, ModuleNotFoundError):
        return "default: from the recipe"
    shown = "x".join(str(x) for x in v) if isinstance(v, list) else ("none" if v is None else v)
    return f"default: from the recipe ({dataset}: {shown})"


# A usage error (unknown choice, out-of-range number, missing option) is one red line like every other error,
# not a boxed panel: `Error: Invalid value for '--amp': 'fp8' is not one of 'bf16', 'fp16'. (eseg eval --help)`.
def _one_line_usage_error(self) -> None:
    if type(self).__name__ == "NoArgsIsHelpError":
        return
    ctx = getattr(self, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    err_console.print(f"[bold red]Error:[/] {escape(' '.join(self.format_message().split()))}{hint}",
                      highlight=False, soft_wrap=True)


typer_rich_utils.rich_format_error = _one_line_usage_error


# ----------------------------------------------------------------------------- inference modes
# The options of the inference modes, one definition for every command that runs a model (eval, predict,
# pseudo-label); `inference_mode` turns them into the Predictor's keywords.
MODE_OPTION = typer.Option("whole", "--mode", case_sensitive=False,
                           help="whole (single scale, the paper's protocol), slide (sliding windows), or msflip "
                                "(multi-scale + flip).")
CROP_OPTION = typer.Option(None, "--crop", help="Sliding-window size HxW (default for slide: the run's training "
                                                "crop from its config; optional for msflip).")
STRIDE_OPTION = typer.Option(None, "--stride", help="Sliding-window stride HxW (default 2/3 of crop).")
SCALES_OPTION = typer.Option("0.5,0.75,1.0,1.25,1.5,1.75", "--scales", help="msflip scales, comma-separated.")
FLIP_OPTION = typer.Option(True, "--flip/--no-flip", help="msflip: add horizontal flips.")


def inference_mode(mode, crop: str | None, stride: str | None, scales: str, flip: bool) -> dict:
    """The mode options as ``Predictor``/``evaluate`` keywords (sizes and scales parsed; a bad one is one line
    naming its option)."""
    from eseg_cli.utils import parse_floats, parse_size

    return {"mode": value(mode), "crop": parse_size(crop, "--crop") if crop else None,
            "stride": parse_size(stride, "--stride") if stride else None,
            "scales": tuple(parse_floats(scales, "--scales")), "flip": flip}
