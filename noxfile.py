"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s demo`` (and ``nox -s xla``)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

# torch is capped in pyproject.toml so pip takes the local 2.14.1 build rather than a newer download.


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The test suite (pass pytest options after --, e.g. ``nox -s tests -- -m 'not slow'``)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and tooling."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "eseg_cli", "tests", "benchmarks", "noxfile.py")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The quick-start job (see the README)."""
    session.install("-e", ".")
    session.run("eseg", "train", "--scale", "lite-s", "--run-dir", "runs/quickstart", "--yes")
    session.run("eseg", "eval", "--checkpoint", "runs/quickstart")


@nox.session(python="3.11")
def xla(session: nox.Session) -> None:
    """torch-xla on the CPU PJRT device: real training steps and an evaluation on the XLA device; the loss falls
    and the weights match CPU eager for a tiny model (tests/test_engine_xla.py). Its own environment, pinned to the
    torch release torch-xla is built against."""
    session.install("torch==2.9.0", "torchvision==0.24.0", "torch-xla==2.9.0")
    session.install("-e", ".[dev]", "torch==2.9.0", "torchvision==0.24.0")  # keeps the pins while resolving eseg
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/test_engine_xla.py", *session.posargs,
                env={"PJRT_DEVICE": "CPU"})


@nox.session(python="3.11")
def selftrain(session: nox.Session) -> None:
    """The self-training demonstration on 2 CPU cores: teacher on 100 labelled synthetic images, 400 more
    pseudo-labelled, student on the union, oracle on all 500 true labels; writes reports/selftrain/."""
    session.install("-e", ".")
    session.run("python", "benchmarks/selftrain.py", *session.posargs)


@nox.session(python="3.11")
def pretrained(session: nox.Session) -> None:
    """ESeg on the ImageNet-pretrained EfficientNet-Lite0 encoder vs the same model from scratch (synthetic set)."""
    session.install("-e", ".[dev]")
    session.run("bash", "benchmarks/pretrained_vs_scratch.sh", *session.posargs, external=True)
