"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s demo``, ``nox -s minimum`` (and ``nox -s xla``); the
experiments: ``nox -s ablate``, ``nox -s selftrain``, ``nox -s pretrained``."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox
import tomllib
from packaging.requirements import Requirement

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

# The torch build the project is tested with (on this workplace's disk); named on every install line, as in the
# README, so pip keeps it instead of downloading a newer multi-GB wheel. pyproject.toml itself has no cap.
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
TORCHVISION_FOR = {"2.4": "0.19", "2.5": "0.20", "2.6": "0.21", "2.7": "0.22", "2.8": "0.23", "2.9": "0.24",
                   "2.10": "0.25", "2.11": "0.26", "2.12": "0.27", "2.13": "0.28", "2.14": "0.29"}


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The test suite (pass pytest options after --, e.g. ``nox -s tests -- -m 'not slow'``)."""
    session.install(*TORCH, "-e", ".[dev]")
    session.run("pytest", "-q", *session.posargs)


def minimum_constraints() -> list[str]:
    """Every dependency of pyproject.toml pinned at its lower bound (``>=X`` -> ``==X``), torchvision (timm's
    dependency) to match torch's. torch's bound is a registry download (about 3 GB with its CUDA libraries)."""
    meta = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    pins = []
    for line in meta["dependencies"]:
        req = Requirement(line)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        if lower:
            pins.append(f"{req.name}=={lower[0]}")
    torch = next(p for p in pins if p.startswith("torch=="))[len("torch=="):]
    tv = TORCHVISION_FOR[".".join(torch.split(".")[:2])]
    pins.append(f"torchvision=={tv}.*")
    return pins


@nox.session(python="3.11", reuse_venv=False)
def minimum(session: nox.Session) -> None:
    """The test suite against the lowest version of every dependency that pyproject.toml allows (see
    :func:`minimum_constraints`)."""
    pins = minimum_constraints()
    constraints = Path(session.create_tmp()) / "minimum-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    session.log("minimum versions: " + ", ".join(pins))
    session.install("-c", str(constraints), "-e", ".[dev]")
    session.run("python", "-m", "pip", "freeze")
    session.run("pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and tooling."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "eseg_cli", "tests", "benchmarks", "noxfile.py")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The quick-start job (see the README)."""
    session.install(*TORCH, "-e", ".")
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
    """Self-training with seeds (reports/selftrain/PROTOCOL.md): teacher on 50 labelled synthetic images, 2000 more
    pseudo-labelled, student on both, oracle on their true labels; writes reports/selftrain/. Resumable."""
    session.install(*TORCH, "-e", ".[dev]")
    session.run("python", "benchmarks/selftrain.py", "--part", "selftrain", *session.posargs)


@nox.session(python="3.11")
def pretrained(session: nox.Session) -> None:
    """ESeg-Lite-S's decoder on the ImageNet-pretrained EfficientNet-Lite0 encoder vs the same network from scratch,
    on the self-training protocol's labelled subset, with seeds; writes reports/selftrain/. Resumable."""
    session.install(*TORCH, "-e", ".[dev]")
    session.run("python", "benchmarks/selftrain.py", "--part", "pretrained", *session.posargs)


# The proxy ablations of reports/ablate/PROTOCOL.md: one command per ablation, every cell under one recipe, seeds
# shared by the cells (paired). Rows and run folders go to runs/ablate/<kind>/; the results and each run's logs
# (no checkpoints) are then copied to reports/ablate/<kind>/.
ABLATE_PROTOCOL = "protocol v1"
ABLATE_RECIPE = "reports/ablate/protocol-v1.yaml"
ABLATE_SEEDS = 4  # PROTOCOL.md section 5, final settings: the 4-hour budget allows 4
ABLATE_OPTIONS = {
    # ESeg-Lite-S's encoder stands in for EfficientNet-B1 under both decoders (PROTOCOL.md: encoder scale)
    # ... and the ASPP rates scaled by 0.5 to the 256x256 crop's feature maps (PROTOCOL.md, section 5)
    "decoder": ["--scale", "lite-s", "--aspp-scale", "0.5"],
    "levels": ["--scale", "lite-s"],
    "fusion": ["--scale", "lite-s"],
}


def ablate_command(kind: str) -> list[str]:
    """The command of one ablation at the protocol's settings (rerunning it resumes where it stopped)."""
    return ["eseg", "ablate", kind, *ABLATE_OPTIONS[kind], "--train", "--seeds", str(ABLATE_SEEDS),
            "--protocol", ABLATE_PROTOCOL, "--recipe", ABLATE_RECIPE, "--out", "runs/ablate", "--threads", "2"]


def copy_ablation(kind: str, runs: Path = Path("runs/ablate"), reports: Path = Path("reports/ablate")) -> None:
    """``runs/ablate/<kind>/results.jsonl`` and each run's config and logs into ``reports/ablate/<kind>/`` (the
    logs folder is replaced: no earlier run's curves stay beside the protocol's)."""
    src, dst = runs / kind, reports / kind
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "results.jsonl", dst / "results.jsonl")
    shutil.rmtree(dst / "logs", ignore_errors=True)
    for run in sorted((src / "runs").iterdir()):
        for name in ("config.yaml", "log.jsonl", "val.jsonl", "summary.json"):
            if (run / name).is_file():
                (dst / "logs" / run.name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / name, dst / "logs" / run.name / name)


@nox.session(python="3.11")
def ablate(session: nox.Session) -> None:
    """The decoder, levels and fusion ablations of reports/ablate/PROTOCOL.md (``nox -s ablate -- decoder`` runs one),
    then the report. Resumable: run it again after a kill; finished (cell, seed) pairs are skipped."""
    kinds = session.posargs or list(ABLATE_OPTIONS)
    unknown = sorted(set(kinds) - set(ABLATE_OPTIONS))
    if unknown:
        session.error(f"unknown ablation(s) {', '.join(unknown)}; choose from {', '.join(ABLATE_OPTIONS)}")
    session.install(*TORCH, "-e", ".")
    for kind in kinds:
        session.run(*ablate_command(kind))
        copy_ablation(kind)
    session.run(*report_command())


def report_command() -> list[str]:
    """``eseg report`` over the protocol's results: each ablation's folder (not the pilot's, which lives beside them
    under another protocol name) and the self-training results once they exist."""
    results = [f"reports/ablate/{kind}" for kind in ABLATE_OPTIONS]
    results += [d for d in ("reports/selftrain",) if (Path(d) / "results.jsonl").is_file()]
    return ["eseg", "report", *(a for r in results for a in ("--results", r)), "--profile", "reports/benchmarks",
            "--out", "reports", "--yes"]
