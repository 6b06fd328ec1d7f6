"""Packaging metadata fits the code: every imported distribution declared, no caps, CI runs the README."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
META = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# import name -> distribution name, where they differ
DIST = {"cv2": "opencv-python-headless", "yaml": "pyyaml", "PIL": "pillow"}
# imported, but only on a path that needs an optional install (checked where it is used)
OPTIONAL = {"torch_xla", "tensorboard", "onnx", "onnxruntime", "torchao"}  # onnx*, torchao: the deploy extra


def _requirements() -> dict[str, Requirement]:
    return {Requirement(r).name.lower(): Requirement(r) for r in META["dependencies"]}


def _third_party_imports() -> set[str]:
    names = set()
    for f in (ROOT / "eseg_cli").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("eseg_cli", "__future__")}


def test_every_imported_distribution_is_declared():
    declared = set(_requirements())
    missing = {DIST.get(n, n).lower() for n in _third_party_imports() - OPTIONAL} - declared
    assert not missing, f"imported by eseg_cli but not in pyproject dependencies: {sorted(missing)}"


def test_no_dependency_is_capped_and_each_has_a_lower_bound():
    for name, req in _requirements().items():
        ops = {s.operator for s in req.specifier}
        assert ">=" in ops, f"{name} has no lower bound"
        assert not ops & {"<", "<=", "==", "~="}, f"{name} is capped: {req}"


def test_torchvision_is_not_a_direct_dependency_unless_imported():
    if "torchvision" not in _third_party_imports():
        assert "torchvision" not in _requirements()


def test_ci_runs_the_readmes_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = next(line for line in readme.splitlines() if re.search(r"pip install .*\[dev\].*pytest", line))
    assert cmd.strip() in ci.splitlines()
