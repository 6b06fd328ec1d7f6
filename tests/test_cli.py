"""The command line as a whole: every listed command works and documents an example."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from eseg_cli.cli import app

runner = CliRunner()


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_expected_commands_are_listed():
    assert {"profile", "models"} <= set(_commands())


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help_with_an_example(name):
    res = runner.invoke(app, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "eseg " + name in res.output  # an example invocation
    assert "Example" in res.output


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "eseg_cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("eseg ")


def test_models_json():
    import json

    res = runner.invoke(app, ["models", "--json"])
    rows = json.loads(res.stdout)
    assert rows[3] == {"model": "eseg-s", "paper_name": "ESeg-S", "width": 1.0, "depth": 1.1, "channels": 96,
                       "repeats": 4}


def _all_commands():
    """(path, click command) for every command and subcommand."""
    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            if getattr(sub, "commands", None):
                walk(sub, [*path, name])
            else:
                out.append((" ".join([*path, name]), sub))

    walk(root, [])
    return out


# commands that compute with torch: each takes --threads and --device
COMPUTING = {"profile", "train", "eval", "ablate", "browse", "plot", "report", "pseudo-label", "predict", "export"}


def _options(cmd):
    return [p for p in cmd.params if p.param_type_name == "option"]


def test_every_option_of_every_command_has_help():
    assert sum(len(_options(cmd)) for _, cmd in _all_commands()) > 100
    missing = [f"{path} {p.opts[0]}" for path, cmd in _all_commands() for p in _options(cmd)
               if not (p.help or "").strip()]
    assert not missing, f"options without help: {missing}"


def test_short_flags_mean_the_same_everywhere():
    meaning: dict[str, set] = {}
    for _path, cmd in _all_commands():
        for p in _options(cmd):
            if True:
                longs = [o for o in p.opts if o.startswith("--")]
                for short in (o for o in p.opts if not o.startswith("--")):
                    meaning.setdefault(short, set()).add(longs[-1] if "--out" not in longs else "--out")
    clash = {s: m for s, m in meaning.items() if len(m) > 1}
    assert not clash, f"one short flag, several meanings: {clash}"
    assert meaning.get("-o") == {"--out"}


def test_every_computing_command_takes_threads_and_device():
    for path, cmd in _all_commands():
        if path.split()[0] in COMPUTING:
            opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
            # browse runs no model, export traces on the CPU: only the CPU threads apply to them
            assert ({"--threads"} if path in ("browse", "export") else {"--threads", "--device"}) <= opts, path


def test_root_help_has_examples():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "Examples" in res.output and "eseg train" in res.output


def test_choices_complete_and_accept_any_case():
    from eseg_cli.analysis.ablate import cells_for
    from eseg_cli.cli._common import AMPS, CELLS, HEADS, MODES, complete_model, value
    from eseg_cli.inference.modes import MODES as INFERENCE_MODES
    from eseg_cli.inference.precision import AMP_DTYPES
    from eseg_cli.inference.predictor import HEADS as INFERENCE_HEADS
    from eseg_cli.models import list_models

    ablate = typer.main.get_command(app).commands["ablate"]
    ctx = ablate.make_context("ablate", ["levels", "--cell", "P3-P7", "--scale", "S"])
    # typer >= 0.17 hands the Enum members to the command, older releases their strings: value() takes both
    assert [value(c) for c in ctx.params["cells"]] == ["p3-p7"] and ctx.params["scale"] == "S"
    res = runner.invoke(app, ["ablate", "levels", "--cell", "P3-P8"])
    assert res.exit_code == 2 and "P3-P8" in res.output

    assert {c.name for k in ("decoder", "levels", "fusion") for c in cells_for(k)} == {c.value for c in CELLS}
    # the inference modes and amp settings are the library's (inference/modes.py, inference/precision.py)
    assert tuple(m.value for m in MODES) == INFERENCE_MODES and {a.value for a in AMPS} == set(AMP_DTYPES)
    assert tuple(h.value for h in HEADS) == INFERENCE_HEADS
    # --scale completes from the registry: every registered name, and the ESeg family's short ones
    assert set(complete_model("")) == {*list_models(), "lite-s", "lite-m", "lite-l", "s", "m", "l"}
    assert complete_model("DEEP") == ["deeplabv3plus"]


@pytest.mark.parametrize("command", [["train", "--steps", "1"], ["profile", "--no-latency", "--no-flops"],
                                     ["ablate", "levels"]])
def test_an_unknown_model_is_one_line_naming_scale(command):
    res = runner.invoke(app, [*command, "--scale", "eseg-xl"])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "--scale" in line and "'eseg-xl'" in line and "eseg-lite-s" in line


# ------------------------------------------------------------------ help texts keep their brackets (issue 20)

def _help_texts(name: str | None) -> list[str]:
    """The rich-markup help texts of the root (``None``) or a command: its docstring and every parameter's help."""
    group = typer.main.get_command(app)
    cmd = group if name is None else group.commands[name]
    return [t for t in [cmd.help, *(getattr(p, "help", None) for p in cmd.params)] if t]


def _literal_brackets(text: str) -> list[str]:
    """The ``[...]`` runs of ``text`` that rich would take as markup but that are no style (``[tensorboard]`` in
    ``pip install 'eseg[tensorboard]'``): unescaped, rich drops them from the help."""
    import re

    from rich.style import Style

    found = []
    for m in re.finditer(r"(\\*)\[([a-z#/@][^[]*?)]", text, re.IGNORECASE):
        escaped, tag = len(m.group(1)) % 2 == 1, m.group(2)
        if escaped or tag.startswith("/"):
            continue
        try:
            Style.parse(tag)
        except Exception:  # noqa: BLE001 - rich raises StyleSyntaxError (and others) for a non-style
            found.append(m.group(0))
    return found


@pytest.mark.parametrize("name", [None, *_commands()])
def test_help_texts_escape_their_brackets(name):
    bad = [b for t in _help_texts(name) for b in _literal_brackets(t)]
    assert not bad, f"{name or 'eseg'}: escape these as \\[...] or rich drops them from the help: {bad}"


@pytest.mark.parametrize("name", [None, *_commands()])
def test_help_output_shows_every_escaped_bracket(name):
    import re

    res = runner.invoke(app, ([name] if name else []) + ["--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert res.exit_code == 0, res.output
    shown = " ".join(res.output.split())
    for text in _help_texts(name):
        for literal in re.findall(r"\\(\[[^\]]*])", text):  # what \[...] must print
            assert literal in shown, f"{name or 'eseg'} --help lost {literal!r}"


def test_train_help_shows_the_tensorboard_extra():
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert "eseg[tensorboard]" in " ".join(res.output.split())
