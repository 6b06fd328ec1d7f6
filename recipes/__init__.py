"""Training recipes: ``base.yaml`` (what every dataset shares) and one YAML file per dataset laid over it, the
only source of training defaults.

This folder ships inside the package as ``eseg_cli.recipes`` (see ``[tool.setuptools]`` in pyproject.toml);
:func:`eseg_cli.engine.config.load_config` reads it with :mod:`importlib.resources`.
"""
