"""Only the package list lives here (everything else is in pyproject.toml): every ``eseg_cli*`` package found on
disk, plus ``eseg_cli.recipes``, which pyproject's ``package-dir`` maps to the top-level ``recipes/`` folder and
which setuptools' discovery cannot find by itself."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["eseg_cli", "eseg_cli.*"]), "eseg_cli.recipes"])
