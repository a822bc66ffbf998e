"""The accuracy search's second opinion: k folds of train that never split a scene (near-copies)."""

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import accuracy_search  # noqa: E402
from benchmarks.accuracy_search import file_order_split, fold_split, leak_check, write_fold  # noqa: E402
from retail_vision.data.sources import Examples  # noqa: E402


def _photos(scenes_per_class: dict[str, int], shots: int, seed: int = 0):
    """Examples whose file order interleaves the scenes (as in the grocery photos) and their features.

    Each scene is a random direction; its shots are that direction plus a little noise, so shots of
    one scene are near-copies (cosine ~0.99) and different scenes are far apart (~0).
    """
    rng = np.random.default_rng(seed)
    paths, labels, features, scene_of = [], [], [], []
    for label, (name, scenes) in enumerate(scenes_per_class.items()):
        centres = rng.normal(size=(scenes, 64))
        for number in range(scenes * shots):
            scene = number % scenes  # consecutive file numbers belong to different scenes
            paths.append(f"/photos/{name}/{name}_{number + 1:03d}.jpg")
            labels.append(label)
            features.append(centres[scene] + 0.05 * rng.normal(size=64))
            scene_of.append((label, scene))
    features = np.array(features, "float32")
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return Examples(paths, labels, list(scenes_per_class)), features, scene_of


def test_scene_folds_keep_each_scene_on_one_side_and_fill_every_fold():
    examples, features, scene_of = _photos({"Granny-Smith": 6, "Arla-Milk": 4, "Leek": 1}, shots=3)
    fold_of = fold_split(examples, features, folds=3)
    for scene in set(scene_of):
        assert len({fold for fold, own in zip(fold_of, scene_of) if own == scene}) == 1 or scene[0] == 2
    for label in range(3):
        counts = np.bincount(fold_of[np.asarray(examples.labels) == label], minlength=3)
        assert counts.min() >= 1, (label, counts)  # every class trains and validates in every fold
    # Leek is one scene: split at a raised similarity rather than left out of two folds.
    assert sorted(np.bincount(fold_of[np.asarray(examples.labels) == 2], minlength=3)) == [1, 1, 1]


def test_the_leak_check_tells_a_scene_split_from_a_file_order_split():
    examples, features, _ = _photos({"Granny-Smith": 6, "Arla-Milk": 6}, shots=3)
    validation, val_features, _ = _photos({"Granny-Smith": 2, "Arla-Milk": 2}, shots=1, seed=1)
    data = SimpleNamespace(train=examples, validation=validation)
    check = leak_check(data, features, val_features, {"scene": fold_split(examples, features, 3),
                                                      "file order": file_order_split(examples, 3)})
    assert check["file order"] > 0.95  # every validation photo has a near-copy in training
    assert check["scene"] < 0.5 and check["val split"] < 0.5  # unseen scenes, like the val photos


def test_write_fold_links_every_photo_once_as_validation_and_never_on_both_sides(tmp_path):
    examples, features, _ = _photos({"Granny-Smith": 4, "Arla-Milk": 3}, shots=2)
    for path in examples.paths:
        local = tmp_path / "data" / os.path.relpath(path, "/photos")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(b"jpeg")
    examples.paths = [str(tmp_path / "data" / os.path.relpath(p, "/photos")) for p in examples.paths]
    fold_of = fold_split(examples, features, folds=2)
    validated = []
    for fold in range(2):
        train, val = write_fold(str(tmp_path / "work"), examples, fold_of, fold)
        train_files = {f for _, _, files in os.walk(train) for f in files}
        val_files = {f for _, _, files in os.walk(val) for f in files}
        assert not train_files & val_files and len(train_files | val_files) == len(examples.paths)
        assert sorted(os.listdir(val)) == sorted(os.listdir(train)) == ["Arla-Milk", "Granny-Smith"]
        validated += sorted(val_files)
    assert len(validated) == len(set(validated)) == len(examples.paths)


def test_a_variants_effect_is_paired_fold_by_fold_against_a_reference_on_the_same_folds(tmp_path, monkeypatch):
    variant = {"variant": "lite2-320", "kfold_folds": [0.89, 0.92, 0.88]}
    baseline = {"variant": "baseline", "kfold_folds": [0.86, 0.90, 0.86]}
    effect = accuracy_search.paired_effect(variant, baseline)
    assert abs(effect["kfold_effect"] - 0.02333) < 1e-4
    assert abs(effect["kfold_effect_se"] - np.std([0.03, 0.02, 0.02], ddof=1) / np.sqrt(3)) < 1e-9

    split = "scenes-0123abcd"
    assert accuracy_search.reference_row([baseline, variant], "baseline", split) is baseline
    assert accuracy_search.reference_row([baseline, variant], "lite2-320", split) is variant
    monkeypatch.setattr(accuracy_search, "REPO", str(tmp_path))
    assert accuracy_search.reference_row([variant], "baseline", split) is None
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    stored = tmp_path / "benchmarks" / "results" / "accuracy_baseline.json"
    stored.write_text(json.dumps({"split": "scenes-ffffffff", "row": baseline}))
    assert accuracy_search.reference_row([variant], "baseline", split) is None  # other folds: not comparable
    stored.write_text(json.dumps({"split": split, "row": baseline}))
    assert accuracy_search.reference_row([variant], "baseline", split) == baseline
    # any variant searched earlier on the same folds, by its results file (--against)
    (tmp_path / "benchmarks" / "results" / "accuracy_lite2-320.json").write_text(
        json.dumps({"split": split, "row": variant}))
    assert accuracy_search.reference_row([baseline], "lite2-320", split) == variant


def test_the_split_name_changes_with_any_photo_s_fold():
    fold_of = np.array([0, 1, 2, 0, 1, 2])
    moved = fold_of.copy()
    moved[3] = 1
    assert accuracy_search.split_name(fold_of) == accuracy_search.split_name(list(fold_of))
    assert accuracy_search.split_name(moved) != accuracy_search.split_name(fold_of)


def test_test_time_augmentation_scores_the_runs_own_validation_photos_and_keeps_the_result(tmp_path, monkeypatch):
    from conftest import tiny_recipe, write_class_folders
    from retail_vision import Recipe, fit

    recipe = tiny_recipe(write_class_folders(tmp_path / "photos"), tmp_path / "runs")
    recipe["train"]["fine_tune"]["epochs"] = 0
    result = fit(Recipe.from_dict(recipe), verbose=0)
    monkeypatch.setattr(accuracy_search, "CROPS_MARGIN", 1.0)  # then the five crops are the photo itself
    scored = accuracy_search.test_time_augmentation(result.run_dir)
    # Without the mirror image it is the model `fit` scored: the same photos, the same top-1.
    assert scored["images"] == result.metrics["val_images"]
    assert scored["top1"] == pytest.approx(result.metrics["val_top1"], abs=1e-6)
    assert scored["crops_top1"] == scored["top1"]
    assert 0.0 <= scored["flip_top1"] <= 1.0
    with open(os.path.join(result.run_dir, accuracy_search.TTA_FILE)) as handle:
        assert json.load(handle) == scored  # a reused run is not scored again


def test_a_test_time_augmentation_s_gain_is_paired_fold_by_fold():
    folds = [{"images": 100, "top1": 0.80, "crops_top1": 0.82}, {"images": 300, "top1": 0.90, "crops_top1": 0.91}]
    effect = accuracy_search.tta_effect(folds, "crops")
    assert effect["top1"] == pytest.approx((82 + 273) / 400)
    assert effect["gain"] == pytest.approx(0.015) and effect["gain_se"] == pytest.approx(0.005)


def test_the_folds_int8_parity_is_pooled_by_photos_not_averaged_by_fold():
    folds = [{"int8_top1": 0.9, "float_top1": 0.9, "int8_agreement": 1.0},
             {"int8_top1": 0.6, "float_top1": 0.8, "int8_agreement": 0.7}]
    pooled = accuracy_search.pooled(folds, [300, 100])
    assert abs(pooled["int8_top1"] - (0.9 * 300 + 0.6 * 100) / 400) < 1e-12  # 0.825, not the folds' mean 0.75
    assert abs(pooled["float_top1"] - 0.875) < 1e-12
    assert abs(pooled["int8_agreement"] - 0.925) < 1e-12


def test_every_variant_is_one_change_to_the_lite0_recipe_and_the_grocery_recipes_are_variants_of_it():
    from retail_vision.recipe import Recipe

    def fields(recipe):  # what trains: everything but the name
        return {key: value for key, value in recipe.model_dump().items() if key != "name"}

    variants = {name: fields(Recipe.from_yaml(accuracy_search.RECIPE, overrides))
                for name, overrides in accuracy_search.VARIANTS.items()}
    repo = accuracy_search.REPO
    assert variants["baseline"] == fields(Recipe.from_yaml(os.path.join(repo, "recipes", "grocery_store_lite0.yaml")))
    # a change to a shipped recipe that the search's variant of it does not follow fails here
    shipped = fields(Recipe.from_yaml(os.path.join(repo, "recipes", "grocery_store.yaml")))
    assert variants["lite2-320-unfreeze-5a-fine-tune-8-lr6e-4-rrc"] == shipped
    assert variants["lite2-352-unfreeze-5a-fine-tune-8-lr6e-4-rrc"] == fields(
        Recipe.from_yaml(os.path.join(repo, "recipes", "grocery_store_max.yaml")))
    # one factor: Lite1 keeps the baseline's augmentation (session 23's did not: it inherited the shipped crops)
    assert variants["lite1"]["augment"] == variants["baseline"]["augment"]
