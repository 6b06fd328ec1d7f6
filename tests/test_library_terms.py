"""Library errors speak in library terms (argument and config names); the CLI writes those names as its flags."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.data.prepare import scan_cityscapes
from eseg_cli.errors import EsegError

PACKAGE = Path(__file__).resolve().parents[1] / "eseg_cli"
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _error_texts(path: Path):
    """(line, text) of every string given to an EsegError (or subclass) raised in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    errors = {"EsegError"} | {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                              and any(getattr(b, "id", "") == "EsegError" for b in n.bases)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in errors:
            for arg in node.args:
                for part in ast.walk(arg):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        yield node.lineno, part.value


def test_no_library_error_names_a_cli_flag():
    found = [f"{p.relative_to(PACKAGE.parent)}:{line}: {text!r}"
             for p in sorted(PACKAGE.rglob("*.py")) if "cli" not in p.relative_to(PACKAGE).parts[:1]
             for line, text in _error_texts(p) if FLAG.search(text)]
    assert not found, "library errors that name CLI flags:\n" + "\n".join(found)


def test_library_names_the_argument_and_the_cli_its_flag(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(EsegError, match=r"^'root' .*nowhere does not exist") as e:
        scan_cityscapes(missing)
    assert e.value.fields == ("root",)
    r = CliRunner().invoke(app, ["prepare-data", "cityscapes", "--root", str(missing)])
    assert r.exit_code == 2
    assert "--root" in r.output and "'root'" not in r.output and "nowhere" in r.output
