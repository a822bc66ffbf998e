"""Head phase on cached features against the same phase through the frozen backbone, over seeds.

    python benchmarks/cached_head.py [--recipe recipes/grocery_store.yaml] [--images 900] [--seeds 42 43 44]

For each seed, the same recipe's head phase (no fine-tune) runs twice: `cache_features: true`
(K augmented views computed once, `train.head.augmented_views`) and `false` (fresh augmentation
every epoch through the frozen backbone). Training photos: a stratified subset of the recipe's
source (fixed across seeds); validation: the recipe's own validation data. Prints val top-1
per run, the mean paired difference with its standard error, and the epoch times after the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402
from benchmarks.fit_throughput import subset_manifest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/grocery_store.yaml")
    parser.add_argument("--images", type=int, default=900, help="training photos (stratified subset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    args = parser.parse_args()

    import keras

    from retail_vision import Recipe, fit

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        recipe = Recipe.from_yaml(args.recipe, args.overrides)
        manifest = subset_manifest(recipe.data.source, args.images, recipe.train.seed, folder)
        for seed in args.seeds:
            for cached in (True, False):
                overrides = args.overrides + [
                    f"data.source={manifest}", "data.allow_outside_paths=true", f"train.seed={seed}",
                    f"train.head.epochs={args.epochs}", "train.fine_tune.epochs=0",
                    f"train.head.cache_features={str(cached).lower()}", "train.early_stopping.patience=0",
                    f"output.runs_dir={folder}/runs",
                ]
                result = fit(Recipe.from_yaml(args.recipe, overrides), verbose=0)
                head = result.metrics["phases"]["head"]
                rows.append({"seed": seed, "head": "cached" if cached else "uncached",
                             "val_top1_last": head["val_top1"], "val_top1_best": head["best_val_top1"],
                             "epoch_s_after_first": statistics.mean(head["epoch_s"][1:]),
                             "views": recipe.train.head.augmented_views if cached else None})
                print(table(rows[-1:], list(rows[-1])), flush=True)
                keras.backend.clear_session()
    differences = [c["val_top1_last"] - u["val_top1_last"] for c, u in zip(rows[::2], rows[1::2])]
    mean = statistics.mean(differences)
    error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else float("nan")
    print(table(rows, list(rows[0])))
    print(f"cached - uncached val top-1 (last epoch), mean over {len(differences)} seeds: "
          f"{mean * 100:+.2f} points (standard error {error * 100:.2f})")
    print("wrote", write_results("cached_head", {"command": " ".join(sys.argv), "rows": rows,
                                                "mean_difference": mean, "standard_error": error}))


if __name__ == "__main__":
    main()
