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
    session.run("eseg", "profile", "--all", "--resolution", "1024x2048", "--no-latency")
