"""Val top-1 of a linear classifier on a frozen backbone's pooled features, per image size and group.

    python benchmarks/linear_probe.py [--recipe recipes/grocery_store.yaml] [--sizes 224 288] [--epochs 15]

A quick way to choose the input size before a long fine-tune: the features of each size are
computed once (no augmentation), then a softmax layer trains on them in seconds. Accuracy is
also split by the first folder level under the training source (Fruit, Packages, Vegetables
for the Grocery Store photos), to see where resolution matters.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/grocery_store.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 288])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    args = parser.parse_args()

    import keras
    import numpy as np

    from retail_vision import Recipe
    from retail_vision.classifier import build_classifier
    from retail_vision.data import pipeline
    from retail_vision.data.training_data import resolve_training_data
    from retail_vision.training.feature_cache import feature_extractor

    recipe = Recipe.from_yaml(args.recipe, args.overrides)
    data = resolve_training_data(recipe.data, recipe.train.seed)
    classes = len(data.class_names)
    root = os.path.abspath(recipe.data.source)
    group_of = {label: os.path.relpath(path, root).split(os.sep)[0]
                for path, label in zip(data.train.paths, data.train.labels)}
    rows = []
    for size in args.sizes:
        classifier = build_classifier(recipe.model.backbone, classes, recipe.model.weights, image_size=size)
        batches = lambda examples: pipeline.batched(  # noqa: E731
            pipeline.files_dataset(examples, size, recipe.data.resize), classes, 32, False, 0, False, len(examples))
        started = time.perf_counter()
        extractor = feature_extractor(classifier)
        train_x, val_x = (extractor.predict(batches(examples), verbose=0) for examples in (data.train, data.validation))
        train_y, val_y = (np.eye(classes, dtype="float32")[examples.labels] for examples in (data.train, data.validation))
        seconds = time.perf_counter() - started
        keras.utils.set_random_seed(recipe.train.seed)
        head = keras.Sequential([keras.Input(train_x.shape[1:]), keras.layers.Dense(classes, activation="softmax")])
        head.compile(keras.optimizers.AdamW(1e-3), keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
        head.fit(train_x, train_y, batch_size=32, epochs=args.epochs, verbose=0)
        right = head.predict(val_x, verbose=0).argmax(1) == val_y.argmax(1)
        by_group = collections.defaultdict(list)
        for label, ok in zip(val_y.argmax(1), right):
            by_group[group_of[label]].append(ok)
        row = {"image_size": size, "val_top1": float(right.mean()), "features_s": seconds}
        row.update({f"{group} ({len(oks)})": float(np.mean(oks)) for group, oks in sorted(by_group.items())})
        rows.append(row)
        keras.backend.clear_session()
    print(table(rows, list(rows[0])))
    print("wrote", write_results("linear_probe", {"command": " ".join(sys.argv), "recipe": args.recipe, "rows": rows}))


if __name__ == "__main__":
    main()
