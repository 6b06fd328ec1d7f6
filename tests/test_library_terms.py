"""Library errors speak in library terms (argument and config names); the CLI writes those names as its flags."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.data.prepare import scan_cityscapes
from eseg_cli.errors import EsegError


def test_library_names_the_argument_and_the_cli_its_flag(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(EsegError, match=r"^'root' .*nowhere does not exist") as e:
        scan_cityscapes(missing)
    assert e.value.fields == ("root",)
    r = CliRunner().invoke(app, ["prepare-data", "cityscapes", "--root", str(missing)])
    assert r.exit_code == 2
    assert "--root" in r.output and "'root'" not in r.output and "nowhere" in r.output
