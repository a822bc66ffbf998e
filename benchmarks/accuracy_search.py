"""What buys accuracy on the grocery photos: recipe variants judged on val and on a k-fold of train.

    python benchmarks/accuracy_search.py [--variants baseline,lite2-320,...] [--folds 3] [--work DIR]
    python benchmarks/accuracy_search.py --variants mine --set model.dropout=0.3 ...   # an ad-hoc variant
    python benchmarks/accuracy_search.py --list                                     # the variants it knows

The val split is 296 photos of 60 of the 81 classes: a standard error of ~2 points, too coarse
to pick between recipes alone. The second opinion is a k-fold of the train split that covers
every class: within each class the photos are sorted by file name and cut into K contiguous
blocks (consecutive photos show the same bin from another angle, so a random split would leak
near-copies into validation); fold k validates on block k of every class and trains on the
rest. Its top-1 pools the K folds' photos (~2,640, every class), with the standard error over
the folds' means.

Each variant is the shipped `recipes/grocery_store.yaml` with `--set`-style overrides, fitted
once on train (val top-1 at the best epoch, as `fit` reports it, and the wall time) and once per
fold. Runs go under --work (default /tmp/retail-vision-accuracy), the class folders of each fold
as links into the dataset, never copies; a variant's finished fits are reused, so an interrupted
search picks up where it stopped. Results: benchmarks/results/accuracy_<variant>.json; `--json`
prints every row as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = os.path.join(REPO, "..", "shared", "datasets", "grocery_store")
RECIPE = os.path.join(REPO, "recipes", "grocery_store.yaml")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WALL_FILE = "benchmark_wall_s.txt"  # in a run directory: the fit's wall time, read when the run is reused

VARIANTS = {  # name -> recipe overrides (each one factor against the shipped recipe)
    "baseline": [],
    "lite1": ["model.backbone=efficientnet_lite1"],
    "lite2-320": ["model.backbone=efficientnet_lite2", "data.image_size=320", "model.dropout=0.3"],
    "lite0-320": ["data.image_size=320"],
    "unfreeze-5a": ["train.fine_tune.unfreeze=block5a_expand_conv"],
    "batchnorm-train": ["train.fine_tune.batchnorm=train"],
    "views-1": ["train.head.augmented_views=1"],
    "fine-tune-20": ["train.fine_tune.epochs=20"],
    "no-augment": ["augment.enabled=false"],
}


def fold_blocks(folder: str, folds: int) -> dict[str, list[list[str]]]:
    """{class: K lists of its photos}: each class's photos sorted by name, cut into K contiguous blocks.

    `folder` is a split of class folders at any depth (Fruit/Apple/Granny-Smith); a class is a
    folder that holds images. Blocks differ in size by at most one photo.
    """
    blocks = {}
    for root, _, files in sorted(os.walk(folder, followlinks=True)):
        images = sorted(f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        if images:
            bounds = [round(i * len(images) / folds) for i in range(folds + 1)]
            blocks[os.path.basename(root)] = [[os.path.join(root, f) for f in images[a:b]]
                                              for a, b in zip(bounds, bounds[1:])]
    return blocks


def write_fold(work: str, blocks: dict[str, list[list[str]]], fold: int) -> tuple[str, str]:
    """(train folder, val folder) of fold `fold`: links to the photos, one folder per class."""
    root = os.path.join(work, "folds", f"fold-{fold + 1}-of-{len(next(iter(blocks.values())))}")
    folders = (os.path.join(root, "train"), os.path.join(root, "val"))
    if os.path.exists(os.path.join(root, "COMPLETE")):
        return folders
    for name, class_blocks in blocks.items():
        for index, block in enumerate(class_blocks):
            target = os.path.join(folders[1] if index == fold else folders[0], name)
            os.makedirs(target, exist_ok=True)
            for path in block:
                link = os.path.join(target, os.path.basename(path))
                if not os.path.lexists(link):
                    os.symlink(os.path.realpath(path), link)
    with open(os.path.join(root, "COMPLETE"), "w") as handle:
        handle.write("links written\n")
    return folders


def run_fit(runs: str, overrides: list[str]) -> dict:
    """{val_top1, val_images, wall_s, run_dir} of the grocery recipe with `overrides`; a finished run is reused."""
    from retail_vision.recipe import Recipe
    from retail_vision.training import fit

    started = [os.path.join(runs, d) for d in sorted(os.listdir(runs))] if os.path.isdir(runs) else []
    if started and os.path.isfile(os.path.join(started[-1], "metrics.json")):
        with open(os.path.join(started[-1], "metrics.json")) as handle:
            metrics = json.load(handle)
        wall = float("nan")  # unknown when the run was resumed or written by another tool
        if os.path.isfile(os.path.join(started[-1], WALL_FILE)):
            with open(os.path.join(started[-1], WALL_FILE)) as handle:
                wall = float(handle.read())
        return {"val_top1": metrics["val_top1"], "val_images": metrics["val_images"], "wall_s": wall,
                "run_dir": started[-1]}
    recipe = Recipe.from_yaml(RECIPE, overrides)
    begin = time.perf_counter()
    result = fit(recipe, runs_dir=runs, resume=started[-1] if started else False)
    wall = time.perf_counter() - begin
    with open(os.path.join(result.run_dir, WALL_FILE), "w") as handle:
        handle.write(f"{wall:.1f}\n")
    return {"val_top1": result.metrics["val_top1"], "val_images": result.metrics["val_images"], "wall_s": wall,
            "run_dir": result.run_dir}


def search_variant(name: str, overrides: list[str], folds: int, work: str) -> dict:
    """One variant: its fit on train (val, wall time) and its K fold fits (pooled top-1, SE over folds)."""
    plain = run_fit(os.path.join(work, name, "train-val"), overrides)
    blocks = fold_blocks(os.path.join(DATASET, "train"), folds)
    per_fold = []
    for fold in range(folds):
        train, val = write_fold(work, blocks, fold)
        per_fold.append(run_fit(os.path.join(work, name, f"fold-{fold + 1}"),
                                [f"data.source={train}", f"data.validation={val}", *overrides]))
    right = sum(f["val_top1"] * f["val_images"] for f in per_fold)
    photos = sum(f["val_images"] for f in per_fold)
    means = [f["val_top1"] for f in per_fold]
    spread = statistics.stdev(means) / math.sqrt(folds)  # --folds is at least 2
    return {
        "variant": name, "overrides": overrides,
        "val_top1": plain["val_top1"], "val_images": plain["val_images"],
        "val_se": math.sqrt(plain["val_top1"] * (1 - plain["val_top1"]) / plain["val_images"]),
        "kfold_top1": right / photos, "kfold_images": photos, "kfold_se": spread,
        "kfold_folds": means, "wall_s": plain["wall_s"], "run_dir": plain["run_dir"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="baseline", help="comma-separated names (--list shows them)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides of an ad-hoc variant (one name in --variants that is not a known one)")
    parser.add_argument("--folds", type=int, default=3, help="contiguous blocks per class for the second opinion")
    parser.add_argument("--work", default="/tmp/retail-vision-accuracy", help="runs and fold links (not the repo)")
    parser.add_argument("--list", action="store_true", help="print the known variants and their overrides")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.list:
        for name, overrides in VARIANTS.items():
            print(f"{name:16} {' '.join(overrides) or '(the shipped recipe)'}")
        return
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if args.folds < 2 or (unknown and (len(names) != 1 or not args.set)):
        raise SystemExit("give --folds 2 or more, and variants from --list (or one new name with --set overrides)")
    if not os.path.isdir(os.path.join(DATASET, "train")):
        raise SystemExit(f"{DATASET}: the Grocery Store dataset is not there (see its README)")
    rows = []
    for name in names:
        rows.append(search_variant(name, VARIANTS.get(name, args.set), args.folds, args.work))
        write_results(f"accuracy_{name}", {"command": " ".join(sys.argv), "folds": args.folds, "row": rows[-1]})
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return
    print(table([{**r, "val_top1": f"{r['val_top1']:.3f} +- {r['val_se']:.3f}",
                  "kfold_top1": f"{r['kfold_top1']:.3f} +- {r['kfold_se']:.3f}", "wall_s": round(r["wall_s"])}
                 for r in rows], ["variant", "val_top1", "kfold_top1", "kfold_images", "wall_s"]))


if __name__ == "__main__":
    main()
