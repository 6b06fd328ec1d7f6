"""Start-up cost: the CLI's modules parse options only, so ``eseg --help`` and TAB completion skip torch."""

from __future__ import annotations

import json
import subprocess
import sys

# Everything that costs start-up time or pulls torch in; CLI modules import these inside command bodies.
HEAVY = ("torch", "timm", "albumentations", "cv2", "pandas", "matplotlib", "fvcore", "numpy",
         "eseg_cli.models", "eseg_cli.engine", "eseg_cli.data", "eseg_cli.analysis", "eseg_cli.inference")


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    mods = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return {m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_importing_the_cli_loads_no_heavy_library():
    assert _loaded_after("import eseg_cli.cli") == set()


def test_building_every_command_loads_no_heavy_library():
    # what `eseg --help` and shell completion do: build the whole click command tree, render the root help
    code = (
        "import typer, contextlib, io\n"
        "from eseg_cli.cli import app\n"
        "group = typer.main.get_command(app)\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    ctx = group.make_context('eseg', [], resilient_parsing=True)\n"
        "    group.get_help(ctx)\n"
    )
    assert _loaded_after(code) == set()


def test_the_package_exports_lazily():
    assert _loaded_after("import eseg_cli") == set()
    # ... and the names still resolve on use
    code = "import eseg_cli\nassert callable(eseg_cli.build_model)\nassert 'build_model' in dir(eseg_cli)"
    subprocess.run([sys.executable, "-c", code], check=True)
