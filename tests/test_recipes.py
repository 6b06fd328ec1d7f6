"""Recipes are the only source of training defaults: every key of every recipe resolves, and each value is stated
in one place (base.yaml for what all datasets share, a dataset's recipe for what is its own)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml

from eseg_cli.data import list_datasets
from eseg_cli.engine import TrainConfig, load_config
from eseg_cli.engine.config import BASE_RECIPE, builtin_recipe, builtin_recipes, read_recipe, validate
from eseg_cli.engine.losses import OhemCrossEntropy, build_loss
from eseg_cli.errors import EsegError
from eseg_cli.models import SCALES

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def test_the_dataclass_holds_no_defaults():
    with_default = [f.name for f in dataclasses.fields(TrainConfig)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert not with_default, f"defaults belong in the recipes, not in TrainConfig: {with_default}"
    # nor do the training code's own signatures restate the recipes' OHEM settings
    assert inspect.signature(OhemCrossEntropy).parameters["thresh"].default is inspect.Parameter.empty
    assert inspect.signature(OhemCrossEntropy).parameters["min_kept"].default is inspect.Parameter.empty
    assert inspect.signature(build_loss).parameters["ohem_thresh"].default is None


def test_one_recipe_per_registered_dataset():
    assert builtin_recipes() == sorted(list_datasets())


@pytest.mark.parametrize("dataset", builtin_recipes())
def test_every_key_of_every_recipe_resolves_for_every_scale(dataset):
    base = read_recipe(builtin_recipe(BASE_RECIPE))
    own = read_recipe(builtin_recipe(dataset))
    blocks = own.pop("scales", {}) or {}
    assert set(base) | set(own) == set(FIELDS), "base.yaml and the dataset's recipe give every key"
    for scale in SCALES:
        cfg = load_config(dataset, scale)
        assert cfg.dataset == dataset and cfg.scale == scale  # stored by their registered names
        for key in FIELDS:
            block = next((b for name, b in blocks.items() if f"eseg-{name}" == scale or name == scale), {})
            expected = block.get(key, own.get(key, base.get(key)))
            assert getattr(cfg, key) == (expected if key not in ("scale", "dataset") else getattr(cfg, key)), key


@pytest.mark.parametrize("dataset", builtin_recipes())
def test_no_value_is_stated_twice(dataset):
    base = read_recipe(builtin_recipe(BASE_RECIPE))
    own = read_recipe(builtin_recipe(dataset))
    blocks = own.pop("scales", {}) or {}
    restated = [k for k, v in own.items() if k in base and base[k] == v]
    assert not restated, f"recipes/{dataset}.yaml restates base.yaml: {restated}"
    for name, block in blocks.items():
        again = [k for k, v in block.items() if {**base, **own}.get(k) == v]
        assert not again, f"recipes/{dataset}.yaml scales.{name} restates the recipe: {again}"


def test_names_resolve_once_and_are_stored_canonical(tmp_path):
    cfg = load_config("ADE", "Lite_S")
    assert (cfg.dataset, cfg.scale) == ("ade20k", "eseg-lite-s")
    assert load_config("ade20k", "eseg-m").weight_decay == load_config("ade20k", "M").weight_decay
    assert load_config("cityscapes", "l").clip_grad == 10.0  # the per-scale block, found by its short name
    assert load_config(scale="deeplabv3plus").scale == "deeplabv3plus"  # any registered model
    with pytest.raises(EsegError, match="unknown dataset 'imagenet'"):
        load_config("imagenet")
    with pytest.raises(EsegError, match="'scale'.*unknown model 'xl'"):
        load_config("synthetic", "xl")
    # a saved config from before names were stored canonical still loads (resume), canonical
    old = {**load_config().to_dict(), "scale": "lite-s", "dataset": "Synthetic"}
    assert (validate(old).scale, validate(old).dataset) == ("eseg-lite-s", "synthetic")


def test_a_missing_key_is_named(tmp_path):
    partial = load_config().to_dict()
    del partial["seed"]
    with pytest.raises(EsegError, match="no value for 'seed'"):
        validate(partial)


def test_user_recipe_is_laid_over_the_dataset_recipe(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "folder", "crop_size": [64, 64], "steps": 10,
                                      "scales": {"lite-s": {"lr": 0.5}}}))
    cfg = load_config(recipe=recipe)
    folder = load_config("folder")
    assert cfg.dataset == "folder" and cfg.steps == 10 and cfg.crop_size == [64, 64] and cfg.lr == 0.5
    assert cfg.batch_size == folder.batch_size and cfg.momentum == folder.momentum  # the rest: folder's recipe
    assert load_config(recipe=recipe, scale="m").lr == folder.lr
