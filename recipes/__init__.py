"""Training recipes, one YAML file per dataset: the only source of training defaults.

This folder ships inside the package as ``eseg_cli.recipes`` (see ``[tool.setuptools]`` in pyproject.toml);
:func:`eseg_cli.engine.config.recipe_path` reads it with :mod:`importlib.resources`.
"""
