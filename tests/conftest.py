"""Shared test fixtures: synthetic product photos, a tiny registered backbone, recipe writers.

Synthetic classes differ by colour, so a tiny CNN learns them in a few epochs on 2 CPU cores.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GROCERY = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "grocery_store"
REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_BACKBONE = "tiny_test_cnn"

CLASS_COLOURS = {"red-apple": (200, 40, 40), "green-pear": (40, 190, 60), "blue-carton": (40, 60, 200)}


def pytest_collection_modifyitems(config, items):
    if not GROCERY.is_dir():
        skip = pytest.mark.skip(reason=f"real data not found at {GROCERY}")
        for item in items:
            if "real_data" in item.keywords:
                item.add_marker(skip)


def synthetic_image(colour, size=(40, 32), seed=0, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def write_class_folders(root: pathlib.Path, per_class: int = 8, nested: bool = True, fmt: str = "JPEG") -> pathlib.Path:
    """root/<group>/<class>/*.jpg, with one class one level deeper, like the Grocery Store layout."""
    layout = {
        "red-apple": "Fruit/Apple/red-apple" if nested else "red-apple",
        "green-pear": "Fruit/green-pear" if nested else "green-pear",
        "blue-carton": "Packages/blue-carton" if nested else "blue-carton",
    }
    extension = {"JPEG": "jpg", "PNG": "png"}[fmt]
    for class_index, (name, relative) in enumerate(layout.items()):
        folder = root / relative
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            synthetic_image(CLASS_COLOURS[name], seed=100 * class_index + i).save(folder / f"{name}_{i:03d}.{extension}", fmt)
    return root


@pytest.fixture
def image_folder(tmp_path) -> pathlib.Path:
    return write_class_folders(tmp_path / "photos")


@pytest.fixture(scope="session", autouse=True)
def tiny_backbone():
    """A 2-conv backbone with BatchNorm and drop-connect, registered for the fast tests."""
    import tiny_backbone as tiny

    tiny.register()
    yield TINY_BACKBONE


def tiny_recipe(source, runs_dir, **sections) -> dict:
    recipe = {
        "name": "tiny",
        "data": {"source": str(source), "validation": 0.25, "image_size": 32},
        "model": {"backbone": TINY_BACKBONE, "weights": "none", "dropout": 0.0},
        "augment": {"enabled": False},
        "train": {
            "batch_size": 8,
            "head": {"epochs": 2, "learning_rate": 0.05},
            "fine_tune": {"epochs": 2, "learning_rate": 0.01, "warmup_epochs": 0.5},
        },
        "output": {"runs_dir": str(runs_dir)},
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    return recipe


def write_recipe(path: pathlib.Path, recipe: dict) -> pathlib.Path:
    path.write_text(yaml.safe_dump(recipe))
    return path
