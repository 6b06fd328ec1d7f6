"""Top-level exception handling: any exception escaping a command is one line naming its type; exit 2 for
input problems, 1 for bugs; --debug / ESEG_DEBUG=1 show the traceback."""

from __future__ import annotations

import errno

import pytest
import typer
import yaml
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.cli._common import EsegTyper, describe_error
from eseg_cli.errors import EsegError

runner = CliRunner()


def _app(exc: BaseException) -> typer.Typer:
    a = EsegTyper()

    @a.command()
    def boom():
        raise exc

    @a.command()
    def other():
        pass

    return a


def _yaml_error():
    try:
        yaml.safe_load("a: [1, 2")
    except yaml.YAMLError as e:
        return e


def _unicode_error():
    try:
        b"\xff\xfe\xfa".decode("utf-8")
    except UnicodeDecodeError as e:
        return e


@pytest.mark.parametrize("exc, code, shown", [
    (EsegError("recipe x.yaml: bad"), 2, "recipe x.yaml: bad"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/out.json"), 2, "/ro/out.json"),
    (OSError(errno.ENOSPC, "No space left on device"), 2, "disk is full"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/x"), 2, "read-only"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "out"), 2, "IsADirectoryError"),
    (_unicode_error(), 2, "UTF-8"),
    (_yaml_error(), 2, "ParserError"),
    (MemoryError(), 2, "MemoryError"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), 2,
     "can't allocate memory"),
    (KeyError("oops"), 1, "internal error"),
    (ZeroDivisionError("division by zero"), 1, "ZeroDivisionError"),
])
def test_any_exception_is_one_line_with_its_type(exc, code, shown):
    res = runner.invoke(_app(exc), ["boom"])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert shown in res.output
    assert res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1


def test_dataloader_worker_error_is_reduced_to_its_root_cause():
    msg = ("Caught EsegError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
           '  File "/x/worker.py", line 349, in _worker_loop\n    data = fetcher.fetch(index)\n'
           '  File "/x/datasets.py", line 80, in read_label\n    raise EsegError(...)\n'
           "eseg_cli.errors.EsegError: /data/masks/a.png: label value 7 is outside 0..2\n")
    text, code = describe_error(EsegError(msg))
    assert code == 2 and text == "/data/masks/a.png: label value 7 is outside 0..2"


def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    a = _app(KeyError("oops"))
    monkeypatch.setenv("ESEG_DEBUG", "1")
    res = runner.invoke(a, ["boom"])
    assert res.exit_code == 1 and "Traceback" in res.output and "KeyError" in res.output
    monkeypatch.delenv("ESEG_DEBUG")
    assert "Traceback" not in runner.invoke(a, ["boom"]).output


def test_root_debug_flag_on_the_real_app(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_bytes(b"steps: 5\nname: \xff\xfe\n")  # not UTF-8
    res = runner.invoke(app, ["train", "--recipe", str(bad), "--steps", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output and "r.yaml" in res.output
    res = runner.invoke(app, ["--debug", "train", "--recipe", str(bad), "--steps", "1"])
    assert res.exit_code == 2 and "Traceback" in res.output


def test_rich_markup_in_messages_is_printed_literally():
    res = runner.invoke(_app(EsegError("crop_size must be [H, W], got [bold]x[/]")), ["boom"])
    assert "[H, W]" in res.output and "[bold]x[/]" in res.output
