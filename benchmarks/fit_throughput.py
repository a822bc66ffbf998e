"""`fit` images/s per phase against the same model's ceiling on synthetic in-memory batches.

    python benchmarks/fit_throughput.py [--recipe recipes/grocery_store.yaml] [--images 960] [--rounds 3]

For each phase (head: backbone frozen; fine-tune: the recipe's `unfreeze` and BatchNorm mode),
the recipe's own training model (augmentation in the step) and compile settings, uncached
(caching would hide the pipeline). After one warm-up epoch that fills the image cache and
traces the step, `--rounds` times: one `fit` epoch over the recipe's tf.data pipeline (a
stratified subset of its photos), then the ceiling: the same train step fed one synthetic batch
from memory for as many steps. Alternating them in one process makes this machine's drift
over minutes hit both sides alike. Both are timed between step ends, the epoch from its start
(so a slow first step, e.g. an iterator teardown, counts against fit).
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


def step_timer():
    """A Keras callback recording when each epoch began and each step ended."""
    import keras

    class StepEnds(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.begin, self.ends = time.perf_counter(), []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return StepEnds()


def fit_epoch_rate(model, dataset, images: int) -> float:
    """Training images/s of one `fit` epoch over `dataset`, from the epoch's start to its last step."""
    timer = step_timer()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[timer])
    return images / (timer.ends[-1] - timer.begin)


def ceiling_rate(model, batch_size: int, size: int, num_classes: int, steps: int) -> float:
    """Images/s of the train step on one synthetic batch repeated from memory, `steps` steps after one warm-up."""
    import numpy as np
    import tensorflow as tf

    images = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
    labels = tf.one_hot(np.arange(batch_size) % num_classes, num_classes)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    timer = step_timer()
    model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[timer])
    return steps * batch_size / (timer.ends[-1] - timer.ends[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/grocery_store.yaml")
    parser.add_argument("--images", type=int, default=960, help="training photos (stratified subset)")
    parser.add_argument("--rounds", type=int, default=3, help="fit epochs, each followed by a ceiling run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    args = parser.parse_args()

    import math
    import statistics

    from retail_vision import Recipe, plan
    from retail_vision.classifier import build_classifier, get_backbone
    from retail_vision.training import phases
    from retail_vision.training.augment import build_augmenter
    from retail_vision.training.freezing import BackboneFreezer

    with tempfile.TemporaryDirectory() as folder:
        recipe = Recipe.from_yaml(args.recipe, args.overrides)
        manifest = subset_manifest(recipe.data.source, args.images, recipe.train.seed, folder)
        recipe = Recipe.from_yaml(args.recipe, args.overrides + [
            f"data.source={manifest}", "data.allow_outside_paths=true", "data.validation=0.1"])
        the_plan = plan(recipe)
        data, size = the_plan.data, the_plan.image_size
        batch, classes = recipe.train.batch_size, len(data.class_names)
        train_ds, _ = data.datasets(size, recipe.data.resize, batch, recipe.train.seed, True)
        classifier = build_classifier(recipe.model.backbone, classes, recipe.model.weights, recipe.model.dropout, size)
        model = phases.with_augmentation(classifier, build_augmenter(recipe.augment, recipe.train.seed))
        freezer = BackboneFreezer(get_backbone(classifier))
        steps = math.ceil(data.train_count / batch)
        rows = []
        for phase in the_plan.phases:
            if phase.name == "head":
                freezer.freeze()
            else:
                freezer.unfreeze(the_plan.unfreeze_index, recipe.train.fine_tune.batchnorm)
            phases.compile_for(model, phase, recipe.train, classes)
            warm_up = fit_epoch_rate(model, train_ds, data.train_count)  # fills the image cache, traces
            ceiling_rate(model, batch, size, classes, 2)  # traces the synthetic step
            fits, ceilings = [], []
            for _ in range(args.rounds):
                fits.append(fit_epoch_rate(model, train_ds, data.train_count))
                ceilings.append(ceiling_rate(model, batch, size, classes, steps))
            ratios = [f / c for f, c in zip(fits, ceilings)]
            rows.append({"phase": phase.name, "fit_images_per_s": statistics.mean(fits),
                         "ceiling_images_per_s": statistics.mean(ceilings), "efficiency": statistics.mean(ratios),
                         "lowest_round": min(ratios), "first_epoch_images_per_s": warm_up})
            print(table(rows[-1:], list(rows[-1])), flush=True)
    print(table(rows, list(rows[0])))
    print("wrote", write_results("fit_throughput", {"command": " ".join(sys.argv), "recipe": args.recipe,
                                                   "train_images": data.train_count, "rounds": args.rounds,
                                                   "phases": rows}))


if __name__ == "__main__":
    main()
