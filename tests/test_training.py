"""The two-phase fit on synthetic photos with a tiny backbone: run directory, phases, freezing."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from retail_vision import Recipe, fit, plan
from retail_vision.classifier import build_classifier, get_backbone
from retail_vision.backbone_layers import first_trainable_index
from retail_vision.recipe import AugmentConfig
from retail_vision.training import trainer
from retail_vision.training.augment import DrawnOpsRandAugment, RandomResizedCrop, build_augmenter, build_mixer
from retail_vision.training.freezing import BackboneFreezer

from conftest import TINY_BACKBONE, tiny_recipe


def run(image_folder, tmp_path, **sections):
    return fit(Recipe.from_dict(tiny_recipe(image_folder, tmp_path / "runs", **sections)), verbose=0)


def test_fit_trains_both_phases_and_writes_the_run_directory(image_folder, tmp_path):
    run(image_folder, tmp_path, augment={"enabled": True})
    files = {p.name for p in (tmp_path / "runs").glob("*/*")}
    assert {"recipe.yaml", "labels.txt", "model.keras", "history.json", "metrics.json", "logs"} <= files
    metrics = json.loads((tmp_path / "runs").glob("*/metrics.json").__next__().read_text())
    assert metrics["phases"]["head"]["epochs"] == 2 and metrics["phases"]["fine_tune"]["epochs"] == 2
    assert metrics["train_images"] == 18 and metrics["val_images"] == 6 and metrics["classes"] == 3
    assert metrics["val_top1"] > 0.5  # colours are easy; chance is 1/3
    history = json.loads(next((tmp_path / "runs").glob("*/history.json")).read_text())
    assert history["phase"] == ["head", "head", "fine_tune", "fine_tune"]
    labels = next((tmp_path / "runs").glob("*/labels.txt")).read_text().split()
    assert labels == ["red-apple", "green-pear", "blue-carton"]
    saved = keras.saving.load_model(next((tmp_path / "runs").glob("*/model.keras")), safe_mode=True)
    assert not any(layer.name == "augment" or "random" in layer.name for layer in saved.layers)
    assert saved.output_shape == (None, 3)


def test_frozen_backbone_gives_inference_features_in_the_train_step():
    classifier = build_classifier(TINY_BACKBONE, 3, "none", dropout=0.0, image_size=32)
    backbone = get_backbone(classifier)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    # Unfrozen, the train step runs drop-connect and batch statistics: outputs differ from inference.
    assert not np.allclose(backbone(images, training=True), backbone(images, training=False), atol=1e-4)
    BackboneFreezer(backbone).freeze()
    inference = backbone(images, training=False)
    np.testing.assert_allclose(backbone(images, training=True), inference, atol=1e-6)
    np.testing.assert_allclose(backbone(images, training=True), inference, atol=1e-6)


@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_batchnorm_statistics_move_only_when_the_recipe_says_train(image_folder, tmp_path, batchnorm):
    # Fine-tune only, so the saved (best) weights are the fine-tuned ones.
    result = run(image_folder, tmp_path, train={**tiny_recipe("", "")["train"], "head": {"epochs": 0},
                                                "fine_tune": {"epochs": 1, "batchnorm": batchnorm}})
    bn = get_backbone(result.model).get_layer("bn1")
    moved = not np.allclose(bn.moving_mean.numpy(), 0.0) or not np.allclose(bn.moving_variance.numpy(), 1.0)
    assert moved == (batchnorm == "train")
    # Drop-connect is restored in the saved architecture whatever the phase switched off.
    assert get_backbone(result.model).get_layer("drop_connect").rate == pytest.approx(0.3)


def test_unfreeze_top_n_leaves_lower_layers_frozen():
    classifier = build_classifier(TINY_BACKBONE, 3, "none", image_size=32)
    backbone = get_backbone(classifier)
    freezer = BackboneFreezer(backbone)
    freezer.freeze()
    first = first_trainable_index(backbone, 3)  # conv2, bn2, relu2
    freezer.unfreeze(first, "frozen")
    assert [layer.name for layer in backbone.layers[first:]] == ["conv2", "bn2", "relu2"]
    assert backbone.get_layer("conv2").trainable and not backbone.get_layer("conv1").trainable
    assert not backbone.get_layer("bn2").trainable  # BatchNorm frozen on purpose
    assert backbone.get_layer("drop_connect").rate == 0.0  # below the unfrozen top: stays off
    assert first_trainable_index(backbone, "drop_connect") == 4
    freezer.unfreeze(4, "train")
    assert backbone.get_layer("drop_connect").rate == pytest.approx(0.3)
    assert backbone.get_layer("bn2").trainable


def test_head_only_fit_with_class_weights_and_early_stopping(image_folder, tmp_path):
    result = run(image_folder, tmp_path, train={
        **tiny_recipe("", "")["train"], "class_weights": "auto", "early_stopping": {"patience": 1},
        "head": {"epochs": 3, "learning_rate": 0.05}, "fine_tune": {"epochs": 0}})
    assert list(result.metrics["phases"]) == ["head"]
    assert 1 <= result.metrics["phases"]["head"]["epochs"] <= 3


def test_manifest_source_trains(image_folder, tmp_path):
    rows = [f"{p.relative_to(image_folder)},{p.parent.name}" for p in sorted(image_folder.rglob("*.jpg"))]
    (image_folder / "all.csv").write_text("\n".join(rows))
    result = run(image_folder / "all.csv", tmp_path, train={**tiny_recipe("", "")["train"], "fine_tune": {"epochs": 0}})
    assert result.metrics["train_images"] + result.metrics["val_images"] == 24


@pytest.mark.parametrize("augment", [False, True])
def test_head_trained_on_cached_features_is_the_full_models_head(image_folder, tmp_path, augment):
    result = run(image_folder, tmp_path, augment={"enabled": augment}, train={
        **tiny_recipe("", "")["train"], "head": {"epochs": 3, "learning_rate": 0.05, "cache_features": True,
                                                 "augmented_views": 3},
        "fine_tune": {"epochs": 0}})
    head = result.metrics["phases"]["head"]
    # The full model, evaluated on images, scores exactly what the head scored on cached features.
    assert result.metrics["val_top1"] == pytest.approx(head["best_val_top1"], abs=1e-6)
    assert head["best_val_top1"] > 0.5


def test_uncached_head_phase_still_available(image_folder, tmp_path):
    result = run(image_folder, tmp_path, train={
        **tiny_recipe("", "")["train"], "head": {"epochs": 2, "learning_rate": 0.05, "cache_features": False},
        "fine_tune": {"epochs": 0}})
    assert result.metrics["phases"]["head"]["epochs"] == 2


@pytest.mark.parametrize("augment", [False, True])
def test_fine_tune_on_cached_activations_trains_the_full_models_top(image_folder, tmp_path, augment):
    pretrained = tmp_path / "tiny.weights.h5"  # a partial unfreeze needs weights other than 'none'
    build_classifier(TINY_BACKBONE, 3, "none", image_size=32).get_layer("backbone").save_weights(pretrained)
    section = {"enabled": augment, "crop_area": 0.5}  # the views cached through every augmentation layer
    result = run(image_folder, tmp_path, augment=section, model={"weights": str(pretrained)}, train={
        **tiny_recipe("", "")["train"], "head": {"epochs": 0, "augmented_views": 2},  # best epoch: a fine-tune one
        "fine_tune": {"epochs": 3, "learning_rate": 0.05, "warmup_epochs": 0, "unfreeze": "conv2",
                      "cache_activations": True}})
    fine_tune = result.metrics["phases"]["fine_tune"]
    assert fine_tune["epochs"] == 3
    cache = result.metrics["activation_cache"]
    assert cache["at"] == "fine_tune_cut" and cache["seconds"] > 0
    assert cache["views"] == (2 if augment else 1)
    # The full model, evaluated on images, scores exactly what the top scored on cached activations.
    assert result.metrics["val_top1"] == pytest.approx(fine_tune["best_val_top1"], abs=1e-6)
    trained = get_backbone(result.model)
    initial = get_backbone(build_classifier(TINY_BACKBONE, 3, pretrained, image_size=32))
    assert np.array_equal(trained.get_layer("conv1").get_weights()[0], initial.get_layer("conv1").get_weights()[0])
    assert not np.allclose(trained.get_layer("conv2").get_weights()[0], initial.get_layer("conv2").get_weights()[0])


def test_activations_cached_at_a_cut_give_the_classifiers_features_and_outputs():
    import tensorflow as tf

    from retail_vision.backbone_layers import fine_tune_cut
    from retail_vision.training.feature_cache import FrozenActivations, feature_extractor, top_model

    classifier = build_classifier(TINY_BACKBONE, 3, "none", dropout=0.0, image_size=32)
    BackboneFreezer(get_backbone(classifier)).freeze()
    images = np.random.default_rng(1).uniform(0, 255, (10, 32, 32, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[np.arange(10) % 3]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    backbone = get_backbone(classifier)
    cut = fine_tune_cut(backbone, [layer.name for layer in backbone.layers].index("conv2"))
    cache = FrozenActivations(classifier, cut, dataset, dataset, augmenter=None, views=1, counts=(10, 10))

    head_train, _ = cache.head_datasets(batch_size=4, seed=0)
    features, _ = next(iter(head_train.unbatch().batch(10)))  # shuffled: compare as sorted rows
    expected = feature_extractor(classifier)(images, training=False).numpy()
    np.testing.assert_allclose(np.sort(features.numpy(), axis=0), np.sort(expected, axis=0), atol=2e-2)  # float16

    top, (_, top_val) = top_model(classifier, cut), cache.fine_tune_datasets(batch_size=4, seed=0)
    cached = np.concatenate([top(x, training=False).numpy() for x, _ in top_val])
    np.testing.assert_allclose(cached, classifier(images, training=False).numpy(), atol=2e-2)


def test_cached_epochs_see_every_photo_once_with_one_view_each():
    # Like the uncached phase: each epoch every photo once, freshly augmented; K epochs use all K views.
    from retail_vision.training.feature_cache import _datasets

    views, photos, batch_size = 3, 7, 3
    view_and_photo = np.array([[v, p] for v in range(views) for p in range(photos)], "float16")  # view-major
    labels = np.zeros(views * photos, "int32")
    train, _ = _datasets((view_and_photo, labels), (view_and_photo, labels), batch_size, seed=0, views=views,
                         num_classes=2)
    batches = iter(train)
    epochs = []
    for _ in range(2 * views):
        rows = [next(batches)[0].numpy() for _ in range(-(-photos // batch_size))]  # steps_per_epoch
        epochs.append(np.concatenate(rows))
    for epoch, rows in enumerate(epochs):
        assert sorted(rows[:, 1]) == list(range(photos))  # every photo once: no batch straddles epochs
        assert set(rows[:, 0]) == {epoch % views}
    assert not np.array_equal(epochs[0], epochs[views])  # the second pass over a view is reshuffled


def test_a_workers_shard_fills_every_epoch_with_the_steps_all_workers_take():
    # 27 photos, global batch 8, 2 workers: 4 steps an epoch, each of 4 rows from each worker; worker 0
    # holds 14 photos and fills its 16 rows with all of them and 2 repeated, in the next epoch reshuffled.
    from retail_vision.training.feature_cache import ShardBatches, _datasets

    photos, steps, views = 14, 4, 2
    view_and_photo = np.array([[v, p] for v in range(views) for p in range(photos)], "float16")
    labels = np.zeros(views * photos, "int32")
    shard = ShardBatches(batch_size=4, epoch_rows=steps * 8 // 2)
    train, _ = _datasets((view_and_photo, labels), (view_and_photo, labels), 8, seed=0, views=views,
                         num_classes=2, shard=shard)
    batches = iter(train)
    for epoch in range(2 * views):
        rows = [next(batches)[0].numpy() for _ in range(steps)]
        assert all(len(batch) == 4 for batch in rows)  # every replica a full batch, every step
        rows = np.concatenate(rows)
        assert set(rows[:, 1]) == set(range(photos)) and set(rows[:, 0]) == {epoch % views}


def test_cached_fine_tune_needs_a_cut_that_nothing_below_crosses(image_folder, tmp_path):
    from retail_vision.backbone_layers import fine_tune_cut
    from retail_vision.errors import RecipeError

    backbone = get_backbone(build_classifier("efficientnet_lite0", 3, "none"))
    index = lambda name: first_trainable_index(backbone, name)  # noqa: E731
    assert fine_tune_cut(backbone, index("block6a_expand_conv")).shape[-1] == 112
    assert fine_tune_cut(backbone, index("block5b_expand_conv")) is not None  # its residual starts at the cut
    assert fine_tune_cut(backbone, index("block5b_dwconv")) is None  # block5b's residual crosses it
    assert fine_tune_cut(backbone, 0) is None  # nothing frozen

    def planned(unfreeze):
        return plan(Recipe.from_dict(tiny_recipe(image_folder, tmp_path, model={
            "backbone": "efficientnet_lite0", "weights": "imagenet"}, train={
            **tiny_recipe("", "")["train"], "fine_tune": {"unfreeze": unfreeze, "cache_activations": True}})))

    with pytest.raises(RecipeError, match="'block5b_expand_conv', 'block5c_expand_conv'"):
        planned("block5b_dwconv")
    with pytest.raises(RecipeError, match="unfreeze is 'all'"):
        planned("all")
    assert planned("block6a_expand_conv").cache_cut == index("block6a_expand_conv")


def test_feature_extractor_matches_the_classifiers_pooled_features():
    from retail_vision.training.feature_cache import feature_extractor, head_model

    classifier = build_classifier(TINY_BACKBONE, 3, "none", dropout=0.0, image_size=32)
    images = np.random.default_rng(1).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    features = feature_extractor(classifier)(images, training=False)
    np.testing.assert_allclose(head_model(classifier)(features, training=False), classifier(images, training=False),
                               atol=1e-6)


@pytest.mark.slow  # a minute or more on 2 cores: CI runs it with -m slow
def test_deterministic_runs_give_identical_weights(image_folder, tmp_path):
    def weights(name):
        result = run(image_folder, tmp_path / name, augment={"enabled": True},
                     train={**tiny_recipe("", "")["train"], "deterministic": True})
        return [w.numpy() for w in result.model.weights], result.metrics["val_top1"]

    first, second = weights("a"), weights("b")
    assert first[1] == second[1]
    for a, b in zip(first[0], second[0]):
        np.testing.assert_array_equal(a, b)


def test_mixed_precision_keeps_a_float32_softmax_and_fit_leaves_no_process_setting_behind(image_folder, tmp_path):
    import keras

    np.random.seed(123)
    numpy_state = np.random.get_state()[1].copy()
    result = run(image_folder, tmp_path, train={**tiny_recipe("", "")["train"], "mixed_precision": True,
                                                "fine_tune": {"epochs": 0}})
    assert result.model.get_layer("predictions").dtype_policy.name == "float32"
    assert get_backbone(result.model).get_layer("conv1").dtype_policy.name == "mixed_float16"
    assert result.model.output.dtype == "float32"
    # A second fit in the same notebook starts from the user's settings, not this one's.
    assert keras.mixed_precision.global_policy().name == "float32"
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    cpu_only = run(image_folder, tmp_path / "auto", train={**tiny_recipe("", "")["train"], "fine_tune": {"epochs": 0}})
    import tensorflow as tf

    expected = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    assert get_backbone(cpu_only.model).get_layer("conv1").dtype_policy.name == expected  # auto


def test_a_test_split_is_held_out_first_and_scored_once_at_the_end(image_folder, tmp_path):
    import pathlib

    recipe = Recipe.from_dict(tiny_recipe(image_folder, tmp_path / "runs", data={"test": 0.25}, train={
        **tiny_recipe("", "")["train"], "head": {"epochs": 1, "learning_rate": 0.05}, "fine_tune": {"epochs": 0}}))
    described = plan(recipe).describe()
    assert "test:       6 images (scored once at the end, never tuned on)" in described
    assert "per class:  4 train images" in described  # not "4 (red-apple) to 4 (red-apple)"
    assert any(line.startswith("phase head: 1 epoch of") for line in described)  # not "1 epochs"
    result = fit(recipe, verbose=0)
    split = json.loads((pathlib.Path(result.run_dir) / "split.json").read_text())
    test = set(split["test"]["paths"])
    assert len(test) == 6 and not test & (set(split["train"]["paths"]) | set(split["validation"]["paths"]))
    assert result.metrics["test_images"] == 6 and 0.0 <= result.metrics["test_top1"] <= 1.0
    assert (pathlib.Path(result.run_dir) / "report-test" / "report.md").is_file()


def test_temperature_fitted_on_overconfident_logits_recovers_their_scale():
    from retail_vision.calibration import fit_temperature

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (20000, 5))
    probabilities = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    assert fit_temperature(3.0 * true_logits, labels) == pytest.approx(3.0, rel=0.05)  # 3x too confident
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.05)  # already calibrated


def test_temperature_fit_never_copies_every_logit_to_float64():
    """At 5,000 classes the validation logits are gigabytes in float64: they are read a chunk of rows at a time."""
    import tracemalloc

    from retail_vision.calibration import fit_temperature, top_probability

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (1024, 4000)).astype(np.float32)
    labels = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)  # drawn from softmax(logits): T ~ 1
    tracemalloc.start()
    try:
        temperature = fit_temperature(logits, labels)
        confidence = top_probability(logits, temperature)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < logits.nbytes / 2, f"peak {peak / 1e6:.0f} MB for {logits.nbytes / 1e6:.0f} MB of logits"
    assert temperature == pytest.approx(1.0, rel=0.1)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True)).astype(np.float64) ** (1 / temperature)
    assert confidence == pytest.approx(expected.max(axis=1) / expected.sum(axis=1), rel=1e-5)


def test_fit_calibrates_the_saved_model_and_keeps_every_prediction(image_folder, tmp_path):
    def trained(name, calibrate):
        train = {**tiny_recipe("", "")["train"], "calibrate": calibrate, "fine_tune": {"epochs": 0}}
        return run(image_folder, tmp_path / name, train=train)

    plain, calibrated = trained("plain", False), trained("calibrated", True)
    images = np.random.default_rng(2).uniform(0, 255, (12, 32, 32, 3)).astype("float32")
    before, after = plain.model.predict(images, verbose=0), calibrated.model.predict(images, verbose=0)
    temperature = calibrated.metrics["calibration"]["temperature"]
    assert plain.metrics["calibration"] is None and temperature != pytest.approx(1.0, abs=1e-3)
    np.testing.assert_array_equal(before.argmax(axis=1), after.argmax(axis=1))  # same classes, other confidences
    expected = np.log(before) / temperature
    expected = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(after, expected, atol=1e-4)  # softmax(z / T), inside the model itself
    saved = keras.saving.load_model(next((tmp_path / "calibrated").glob("runs/*/model.keras")), safe_mode=True)
    np.testing.assert_allclose(saved.predict(images, verbose=0), after, atol=1e-6)
    assert calibrated.metrics["val_top1"] == plain.metrics["val_top1"]


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_batches_carry_labels_in_the_proportions_of_their_inputs(kind):
    # Example i is the constant i and of class i, so a mixed row's mean is its labels' weighted classes.
    mixer = build_mixer(AugmentConfig(mix=kind), seed=0)
    classes = np.arange(16, dtype="float32")
    activations = tf.constant(np.broadcast_to(classes[:, None, None, None], (16, 20, 20, 3)))  # a cached grid
    labels = tf.one_hot(tf.range(16), 16)
    batches = tf.data.Dataset.from_tensors((activations, labels)).repeat(4).map(mixer)
    mixed, mixed_labels = (np.concatenate(parts) for parts in zip(*batches.as_numpy_iterator()))
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, atol=1e-5)
    assert (mixed_labels.max(axis=1) < 0.9).sum() >= 4  # pairs were mixed, not passed through
    error = np.abs(mixed.mean(axis=(1, 2, 3)) - mixed_labels @ classes) / classes.max()
    # MixUp is exact; Keras's CutMix weighs labels by its box's continuous area, not the grid cells it pastes
    assert error.mean() < (1e-5 if kind == "mixup" else 0.03)


def test_rand_augment_gives_the_images_keras_s_own_layer_gives_from_the_same_seed():
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32"))
    ours, keras_own = (kind(value_range=(0, 255), factor=0.5, seed=3) for kind in (DrawnOpsRandAugment,
                                                                                   keras.layers.RandAugment))
    for _ in range(4):  # four draws of operations from the same seeded streams
        augmented = ours(images, training=True)
        np.testing.assert_allclose(augmented, keras_own(images, training=True), atol=1e-3)
        assert np.abs(augmented - images).mean() > 0.1
    np.testing.assert_array_equal(ours(images, training=False), images)
    # The drawn operation is chosen by a switch in the graph, not computed with all the others
    traced = tf.function(lambda batch: ours(batch, training=True)).get_concrete_function(images).graph
    assert {op.type for op in traced.get_operations()} & {"Case", "StatelessCase"}
    assert any(isinstance(layer, DrawnOpsRandAugment)
               for layer in build_augmenter(AugmentConfig(rand_augment=0.3), seed=0).layers)
    assert not any(isinstance(layer, DrawnOpsRandAugment) for layer in build_augmenter(AugmentConfig(), seed=0).layers)
    assert build_augmenter(AugmentConfig(flip="none", rotation=0, zoom=0, translation=0, contrast=0, brightness=0,
                                         rand_augment=0.3), seed=0) is not None


def test_random_resized_crop_keeps_a_box_of_at_least_its_share_of_each_photo_resized_back():
    # Channel 0 holds each pixel's column, channel 1 its row: a crop's value ranges are its box
    columns, rows = np.meshgrid(np.arange(64.0), np.arange(64.0))
    grid = np.broadcast_to(np.stack([columns, rows, rows], axis=-1), (32, 64, 64, 3)).astype("float32")
    crop = build_augmenter(AugmentConfig(crop_area=0.3, flip="none", rotation=0, zoom=0, translation=0,
                                         contrast=0, brightness=0), seed=0)
    assert [type(layer) for layer in crop.layers] == [RandomResizedCrop]
    cropped = crop(tf.constant(grid), training=True).numpy()
    assert cropped.shape == grid.shape
    width, height = ((cropped[..., c].max(axis=(1, 2)) - cropped[..., c].min(axis=(1, 2))) / 63 for c in (0, 1))
    assert (width * height >= 0.3 - 0.01).all() and (width * height).min() < 0.6  # small boxes are drawn too
    unclipped = (width < 1) & (height < 1)
    assert ((width / height)[unclipped] > 0.75 - 0.02).all() and ((width / height)[unclipped] < 4 / 3 + 0.02).all()
    assert len(np.unique(cropped[:, 0, 0, 0].round(2))) > 16  # every photo its own box
    np.testing.assert_array_equal(crop(tf.constant(grid), training=False), grid)
    assert not any(isinstance(layer, RandomResizedCrop) for layer in build_augmenter(AugmentConfig(), seed=0).layers)


def test_no_mixer_unless_the_recipe_mixes():
    assert build_mixer(AugmentConfig(), seed=0) is None
    assert build_mixer(AugmentConfig(enabled=False, mix="mixup"), seed=0) is None


def test_the_plan_says_when_fine_tune_batches_are_mixed(image_folder, tmp_path):
    def trainable_line(**augment):
        described = plan(Recipe.from_dict(tiny_recipe(image_folder, tmp_path, augment=augment))).describe()
        return next(line for line in described if line.startswith("  trainable:"))

    assert trainable_line(enabled=True, mix="cutmix").endswith(", batches mixed by cutmix")
    assert "mixed" not in trainable_line(enabled=False, mix="cutmix")


@pytest.mark.parametrize("cached", [True, False])
def test_only_the_fine_tune_phase_trains_on_mixed_batches(image_folder, tmp_path, monkeypatch, cached):
    # A "mixer" that zeroes every label makes the cross-entropy 0 wherever it runs.
    monkeypatch.setattr(trainer, "build_mixer", lambda config, seed: lambda inputs, labels: (inputs, labels * 0))
    pretrained = tmp_path / "tiny.weights.h5"  # a partial unfreeze needs weights other than 'none'
    build_classifier(TINY_BACKBONE, 3, "none", image_size=32).get_layer("backbone").save_weights(pretrained)
    result = run(image_folder, tmp_path, model={"weights": str(pretrained)}, train={
        **tiny_recipe("", "")["train"],
        "fine_tune": {"epochs": 2, "learning_rate": 0.05, "unfreeze": "conv2", "cache_activations": cached}})
    assert (result.metrics["activation_cache"]["at"] == "fine_tune_cut") == cached
    losses = dict(zip(result.history["phase"], result.history["loss"]))
    # the head's true labels give a positive loss, however well it fits the tiny set (it reached 0.007)
    assert losses["head"] > 0.0 and losses["fine_tune"] == 0.0
