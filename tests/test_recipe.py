"""The recipe schema: defaults, strictness, messages that name the path, --set overrides."""

import pathlib

import pytest

from retail_vision.errors import RecipeError
from retail_vision.recipe import Recipe, apply_override

from conftest import REPO


def load(raw, base="/base"):
    return Recipe.from_dict(raw, base)


def test_defaults_fill_every_section():
    recipe = load({"data": {"source": "photos"}})
    assert recipe.model.backbone == "efficientnet_lite0"
    assert recipe.train.fine_tune.batchnorm == "frozen"
    assert recipe.data.source == "/base/photos"  # relative to the recipe file


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"data": {"source": "x"}, "train": {"fine_tune": {"epoch": 3}}}, "train.fine_tune.epoch: unknown key; did you mean 'epochs'?"),
        ({"data": {"source": "x"}, "modle": {}}, "modle: unknown key; did you mean 'model'?"),
        ({"data": {"source": "x", "sorce": "y"}}, "data.sorce: unknown key; did you mean 'source'?"),
        ({"data": {"source": "x"}, "train": {"head": {"epochs": "three"}}}, "train.head.epochs: received 'three'"),
        ({"data": {"source": "x"}, "train": {"optimizer": "adamm"}}, "did you mean 'adam'?"),
        ({"data": {"source": "x"}, "train": {"fine_tune": {"batchnorm": "fozen"}}}, "did you mean 'frozen'?"),
        ({"data": {"source": "x"}, "train": {"batch_size": 0}}, "train.batch_size: received 0"),
        ({"data": {"source": "x"}, "train": 5}, "train: expected a section"),
        ({}, "data: required field missing"),
        ({"data": {"source": "x", "validation": [0.1]}}, "data.validation: received [0.1]"),
        ({"data": {"source": "x"}, "train": {"fine_tune": {"unfreeze": 2.5}}}, "train.fine_tune.unfreeze: received 2.5"),
    ],
)
def test_bad_recipes_name_the_dotted_path(raw, message):
    with pytest.raises(RecipeError) as error:
        load(raw)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unfreeze_accepts_all_a_count_or_a_layer_name():
    for value in ("all", 20, "block6a_expand_conv"):
        assert load({"data": {"source": "x"}, "train": {"fine_tune": {"unfreeze": value}}}).train.fine_tune.unfreeze == value


def test_set_overrides_are_typed_by_yaml_and_validated(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {source: photos}\n")
    recipe = Recipe.from_yaml(str(path), ["train.head.epochs=1", "augment.enabled=false", "model.dropout=0.5"])
    assert recipe.train.head.epochs == 1 and recipe.augment.enabled is False and recipe.model.dropout == 0.5
    with pytest.raises(RecipeError, match="train.head.epochs: received 'x'"):
        Recipe.from_yaml(str(path), ["train.head.epochs=x"])
    with pytest.raises(RecipeError, match="train.head.epohcs: unknown key; did you mean 'epochs'"):
        Recipe.from_yaml(str(path), ["train.head.epohcs=1"])


@pytest.mark.parametrize("override", ["noequals", "=3", "train..epochs=1", "name.x=1"])
def test_malformed_set_is_a_recipe_error(override):
    with pytest.raises(RecipeError):
        apply_override({"name": "n", "data": {"source": "x"}}, override)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  source: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: line \d+, column \d+: malformed YAML"):
        Recipe.from_yaml(str(path))


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load({"data": {"source": "photos"}, "train": {"head": {"epochs": 3}}})
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe.to_yaml())
    assert Recipe.from_yaml(str(path)) == recipe


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path: pathlib.Path):
    from retail_vision import backbones

    recipe = Recipe.from_yaml(str(path))
    backbones.get(recipe.model.backbone)
