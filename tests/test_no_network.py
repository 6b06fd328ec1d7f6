"""No network at run time: importing eseg (and through it albumentations) opens no connection."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = r"""
import socket, sys
calls = []
def refuse(*a, **k):
    calls.append(a[:2])
    raise OSError("network used")
socket.getaddrinfo = refuse
socket.create_connection = refuse
_connect = socket.socket.connect
socket.socket.connect = lambda self, *a: refuse(*a)
import eseg_cli
import eseg_cli.data  # imports albumentations
import albumentations
print("ENV", __import__("os").environ.get("NO_ALBUMENTATIONS_UPDATE"))
print("CALLS", len(calls), calls[:3])
"""


def test_importing_eseg_and_albumentations_makes_no_network_call():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run([sys.executable, "-W", "error::UserWarning:albumentations", "-c", PROBE], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ENV 1" in out.stdout
    assert "CALLS 0 " in out.stdout, out.stdout


def test_the_opt_out_variable_is_the_one_albumentations_reads():
    # guard against a rename upstream: the name must appear in albumentations' own source
    import inspect

    import albumentations

    import eseg_cli  # noqa: F401

    assert "NO_ALBUMENTATIONS_UPDATE" in inspect.getsource(albumentations)
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
