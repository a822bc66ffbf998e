"""Our `fit` against the Keras transfer-learning guide's way, same data, backbone and epochs.

    python benchmarks/baseline.py [--recipe recipes/grocery_store.yaml] [--head-epochs 3] [--fine-tune-epochs 2]

The baseline follows keras.io/guides/transfer_learning: `image_dataset_from_directory`
(stretch-resize, no cache), augmentation inside `dataset.map` on the CPU, the backbone called
with `training=False`, Adam, then `base_model.trainable = True` and Adam(1e-5) for the fine-tune.
Both use the recipe's backbone with the same pretrained weights, batch size and image size.
Reports the wall time of each and the val accuracy of each, and their ratio and difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402


def flat_folders(examples, class_names, folder: str) -> str:
    """image_dataset_from_directory takes the first folder level as the class: link files flat."""
    for name in class_names:
        os.makedirs(os.path.join(folder, name.replace("/", "_")), exist_ok=True)
    for path, label in zip(examples.paths, examples.labels):
        os.symlink(path, os.path.join(folder, class_names[label].replace("/", "_"), os.path.basename(path)))
    return folder


def keras_guide(train_dir, val_dir, class_names, recipe, head_epochs, fine_tune_epochs) -> dict:
    import keras
    import tensorflow as tf

    from retail_vision import backbones

    spec = backbones.get(recipe.model.backbone)
    size = recipe.data.image_size or spec.input_size
    names = [n.replace("/", "_") for n in class_names]
    load = lambda d, shuffle: keras.utils.image_dataset_from_directory(  # noqa: E731
        d, label_mode="categorical", class_names=names, image_size=(size, size),
        batch_size=recipe.train.batch_size, shuffle=shuffle, seed=recipe.train.seed)
    train_ds, val_ds = load(train_dir, True), load(val_dir, False)
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    train_ds = train_ds.map(lambda x, y: (augmentation(x, training=True), y))
    val_ds = val_ds.prefetch(tf.data.AUTOTUNE)
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)

    keras.utils.set_random_seed(recipe.train.seed)
    base_model = spec.build(recipe.model.weights)
    base_model.trainable = False
    inputs = keras.Input(shape=(size, size, 3))
    x = keras.layers.Rescaling(spec.scale, spec.offset)(inputs)
    x = base_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(recipe.model.dropout)(x)
    outputs = keras.layers.Dense(len(class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    started = time.perf_counter()
    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"])
    head = model.fit(train_ds, epochs=head_epochs, validation_data=val_ds, verbose=2)
    head_s = time.perf_counter() - started
    base_model.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="categorical_crossentropy", metrics=["accuracy"])
    fine_tune = model.fit(train_ds, epochs=fine_tune_epochs, validation_data=val_ds, verbose=2)
    total = time.perf_counter() - started
    # The best epoch's val accuracy, as `fit` reports for the best model it keeps.
    best = max(head.history["val_accuracy"] + fine_tune.history["val_accuracy"])
    return {"method": "keras guide", "wall_s": total, "head_s": head_s, "fine_tune_s": total - head_s,
            "val_top1": float(best)}


def ours(recipe_path, overrides, head_epochs, fine_tune_epochs, runs_dir) -> dict:
    from retail_vision import Recipe, fit

    recipe = Recipe.from_yaml(recipe_path, overrides + [
        f"train.head.epochs={head_epochs}", f"train.fine_tune.epochs={fine_tune_epochs}",
        "train.early_stopping.patience=0", f"output.runs_dir={runs_dir}"])
    started = time.perf_counter()
    result = fit(recipe, verbose=2)
    total = time.perf_counter() - started
    phases = result.metrics["phases"]
    return {"method": "retail-vision fit", "wall_s": total, "head_s": phases["head"]["wall_s"],
            "fine_tune_s": phases["fine_tune"]["wall_s"], "val_top1": result.metrics["val_top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/grocery_store.yaml")
    parser.add_argument("--head-epochs", type=int, default=3)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    args = parser.parse_args()

    from retail_vision import Recipe
    from retail_vision.data.training_data import resolve_training_data

    recipe = Recipe.from_yaml(args.recipe, args.overrides)
    data = resolve_training_data(recipe.data, recipe.train.seed)
    with tempfile.TemporaryDirectory() as folder:
        train_dir = flat_folders(data.train, data.class_names, os.path.join(folder, "train"))
        val_dir = flat_folders(data.validation, data.class_names, os.path.join(folder, "val"))
        rows = [ours(args.recipe, args.overrides, args.head_epochs, args.fine_tune_epochs, os.path.join(folder, "runs")),
                keras_guide(train_dir, val_dir, data.class_names, recipe, args.head_epochs, args.fine_tune_epochs)]
    speedup = rows[1]["wall_s"] / rows[0]["wall_s"]
    difference = (rows[0]["val_top1"] - rows[1]["val_top1"]) * 100
    print(table(rows, ["method", "wall_s", "head_s", "fine_tune_s", "val_top1"]))
    print(f"speed-up: {speedup:.2f}x; val top-1 difference: {difference:+.1f} points (ours - guide)")
    print("wrote", write_results("baseline", {"command": " ".join(sys.argv), "head_epochs": args.head_epochs,
                                              "fine_tune_epochs": args.fine_tune_epochs, "rows": rows,
                                              "speedup": speedup, "val_top1_difference_points": difference}))


if __name__ == "__main__":
    main()
