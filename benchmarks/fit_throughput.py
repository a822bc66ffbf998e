"""`fit` images/s per phase against the same model's ceiling on synthetic in-memory batches.

    python benchmarks/fit_throughput.py [--recipe recipes/grocery_store.yaml] [--images 960] [--epochs 2]

The ceiling is the train step alone, fed one batch that is already in memory. Efficiency =
fit's training images/s in epochs after the first (the cache is warm) / the ceiling. The head
and fine-tune phases are measured without caching here: this checks that the input pipeline keeps the
model fed, and caching would hide the pipeline.
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


def subset_manifest(source: str, images: int, seed: int, folder: str) -> str:
    """A manifest of `images` photos, stratified over the classes of `source`."""
    from retail_vision.data import sources

    examples = sources.load_examples(source)
    fraction = min(images / len(examples), 0.99)
    _, subset = sources.stratified_split(examples, fraction, seed)
    path = os.path.join(folder, "subset.csv")
    with open(path, "w") as handle:
        for file, label in zip(subset.paths, subset.labels):
            handle.write(f"{file},{subset.class_names[label]}\n")
    return path


def ceiling(model, batch_size: int, size: int, num_classes: int, steps: int) -> float:
    """Images/s of the train step on one synthetic batch repeated from memory.

    Timed between step ends inside one `fit` call (as `step_rate.py` times its steps), so the
    call's start-up and tracing are not counted; the first 3 steps warm up.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    images = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
    labels = tf.one_hot(np.arange(batch_size) % num_classes, num_classes)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    timer = StepTimes()
    model.fit(data, steps_per_epoch=steps + 3, epochs=1, verbose=0, callbacks=[timer])
    return steps * batch_size / (timer.ends[-1] - timer.ends[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/grocery_store.yaml")
    parser.add_argument("--images", type=int, default=960, help="training photos (stratified subset)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per phase (>= 2: the first fills the cache)")
    parser.add_argument("--steps", type=int, default=15, help="ceiling steps per phase")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    args = parser.parse_args()


    from retail_vision import Recipe, fit
    from retail_vision.freezing import BackboneFreezer
    from retail_vision.classifier import get_backbone
    from retail_vision.training import _compile, warmup_cosine, _with_augmentation
    from retail_vision.augment import build_augmenter

    with tempfile.TemporaryDirectory() as folder:
        recipe = Recipe.from_yaml(args.recipe, args.overrides)
        manifest = subset_manifest(recipe.data.source, args.images, recipe.train.seed, folder)
        overrides = args.overrides + [
            f"data.source={manifest}", "data.allow_outside_paths=true", "data.validation=0.1",
            f"train.head.epochs={args.epochs}",
            f"train.fine_tune.epochs={args.epochs}", "train.head.cache_features=false",
            "train.fine_tune.cache_activations=false",
            "train.early_stopping.patience=0", f"output.runs_dir={folder}/runs",
        ]
        recipe = Recipe.from_yaml(args.recipe, overrides)
        result = fit(recipe, verbose=2)
        rows = []
        model = result.model
        size, batch = int(model.input_shape[1]), recipe.train.batch_size
        num_classes = int(model.output_shape[-1])
        train_model = _with_augmentation(model, build_augmenter(recipe.augment, 0), size)
        freezer = BackboneFreezer(get_backbone(model))
        for phase in ("head", "fine_tune"):
            if phase == "head":
                freezer.freeze()
                _compile(train_model, recipe.train, recipe.train.head.learning_rate, num_classes)
            else:
                freezer.unfreeze(recipe.train.fine_tune.unfreeze, recipe.train.fine_tune.batchnorm)
                _compile(train_model, recipe.train, warmup_cosine(1e-5, 1000, 0), num_classes)
            summary = result.metrics["phases"][phase]
            train_images = result.metrics["train_images"]
            fit_rate = train_images / (sum(summary["train_s"][1:]) / len(summary["train_s"][1:]))
            top = ceiling(train_model, batch, size, num_classes, args.steps)
            rows.append({"phase": phase, "fit_images_per_s": fit_rate, "ceiling_images_per_s": top,
                         "efficiency": fit_rate / top, "first_epoch_train_s": summary["train_s"][0]})
    print(table(rows, ["phase", "fit_images_per_s", "ceiling_images_per_s", "efficiency", "first_epoch_train_s"]))
    print("wrote", write_results("fit_throughput", {"command": " ".join(sys.argv), "recipe": args.recipe,
                                                   "train_images": result.metrics["train_images"], "phases": rows}))


if __name__ == "__main__":
    main()
