"""Open world on the grocery photos: reject products never seen, enroll new ones from a few photos.

    python benchmarks/open_world.py [--work DIR] [--head softmax|cosine] [--stages ...]
        [--recipe FILE] [--set KEY=VALUE ...] [--variant NAME]

A seeded split of whole classes: 61 known, 20 new, spread over Fruit, Vegetables and Packages in
proportion. `fit` trains the shipped grocery recipe on the known classes only (their train and
val photos), then:
- reject: each rejection score on the known val photos against every photo of the 20 new
  classes: AUROC, FPR at 95% TPR, and accuracy at the operating point the run stored; and the
  AUROC against the new classes' val photos alone;
- enroll: the 20 new classes enrolled with k = 1, 5, 10 seeded train photos each, and with the
  dataset's one iconic image per class; 81-way top-1 on the new classes' photos not used to
  enroll them (and 20-way, among the new classes only), and on the known val photos (what the
  known classes lose), and the wall time; and the best 81-way top-1 any map of enroll's grid
  reaches when chosen on the test photos themselves (under the same bound: what the features allow);
- enroll_int8: the 5-shot enrollment into the run's export with an int8 classifier and embedder
  (exported once under --work): wall time and the int8 file's parity;
- retrain: the grocery recipe on all 81 classes, scored on the same photos, with its wall time.

`--set` overrides the recipe of both fits and `--recipe` replaces it (default
`recipes/grocery_store.yaml`; `--recipe recipes/grocery_store_lite0.yaml --variant lite0-288` is
the Lite0 recipe); either is a variant, named by --variant: its runs, versions and results file
carry the name.

Work files (the class-split folders of links, runs, exported versions) go under --work
(default: /tmp/retail-vision-open-world, with -seedN for --seed N: one folder per split, as its
folders of links are the split's), never into the dataset.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = os.path.join(REPO, "..", "shared", "datasets", "grocery_store")
RECIPE = os.path.join(REPO, "recipes", "grocery_store.yaml")
NEW_CLASSES = 20
SHOTS = (1, 5, 10)


def default_work(seed: int) -> str:
    """One work folder per class split: its folders of links hold that split's classes."""
    return "/tmp/retail-vision-open-world" + (f"-seed{seed}" if seed else "")


def split_classes(seed: int = 0) -> tuple[list[str], list[str], dict[str, str]]:
    """(known, new, {class: its folder under train/}): new classes drawn per top-level group in proportion."""
    folders = {}
    with open(os.path.join(DATASET, "train.txt"), encoding="utf-8") as handle:
        for row in csv.reader(handle):
            folder = os.path.dirname(row[0].strip())
            folders[os.path.basename(folder)] = folder
    groups: dict[str, list[str]] = {}
    for name, folder in sorted(folders.items()):
        groups.setdefault(folder.split("/")[1], []).append(name)
    rng = random.Random(seed)
    # Largest remainder: each group's share of NEW_CLASSES, rounded so they sum to it.
    exact = {group: NEW_CLASSES * len(names) / len(folders) for group, names in groups.items()}
    counts = {group: int(share) for group, share in exact.items()}
    for group in sorted(exact, key=lambda g: exact[g] - counts[g], reverse=True)[: NEW_CLASSES - sum(counts.values())]:
        counts[group] += 1
    new = sorted(name for group, names in groups.items() for name in rng.sample(names, counts[group]))
    known = sorted(set(folders) - set(new))
    return known, new, folders


def link_classes(root: str, split: str, classes: list[str], folders: dict[str, str]) -> str:
    """`root/<class>` -> the dataset's `<split>/.../<class>` folder, for the classes that split has."""
    os.makedirs(root, exist_ok=True)
    for name in classes:
        target = os.path.realpath(os.path.join(DATASET, split + folders[name][len("train"):]))
        link = os.path.join(root, name)
        if os.path.isdir(target) and not os.path.islink(link):
            os.symlink(target, link)
    return root


def photos(split: str, name: str, folders: dict[str, str]) -> list[str]:
    folder = os.path.join(DATASET, split + folders[name][len("train"):])
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(".jpg"))


def fit_known(work: str, head: str, known: list[str], folders: dict[str, str], tag: str,
              overrides: list[str], recipe_file: str) -> tuple[str, float]:
    """(run directory, wall seconds) of the grocery recipe on the known classes; a finished run is reused."""
    from retail_vision.recipe import Recipe
    from retail_vision.training import fit

    runs = os.path.join(work, f"runs-known-{tag}")
    started = [os.path.join(runs, d) for d in sorted(os.listdir(runs))] if os.path.isdir(runs) else []
    if started and os.path.isfile(os.path.join(started[-1], "metrics.json")):
        return started[-1], float("nan")
    train = link_classes(os.path.join(work, "known", "train"), "train", known, folders)
    val = link_classes(os.path.join(work, "known", "val"), "val", known, folders)
    recipe = Recipe.from_yaml(recipe_file, [f"data.source={train}", f"data.validation={val}", f"model.head={head}",
                                            "name=grocery_known", *overrides])
    start = time.perf_counter()
    result = fit(recipe, runs_dir=runs, resume=started[-1] if started else False)  # an interrupted run goes on
    return result.run_dir, time.perf_counter() - start


def iconic_image(name: str) -> str:
    with open(os.path.join(DATASET, "classes.csv"), encoding="utf-8") as handle:
        rows = {row[0]: row[4] for row in csv.reader(handle)}
    return os.path.join(DATASET, rows[name].lstrip("/"))


class Photos:
    """Photos decoded once at the model's size, scored by any artifact."""

    def __init__(self, paths: list[str], labels: list[str], size: int, resize: str):
        from retail_vision.artifacts import load_images

        self.paths, self.labels = paths, labels
        self.images, failures = load_images(paths, size, resize)
        assert not failures, failures[:3]


def rejection_table(run_dir: str, known_val: Photos, unknown: Photos, known_train: Photos,
                    unknown_in_val: list[bool]) -> list[dict]:
    """The four scores `rejection.score` offers, and four it does not (cosine to class means of the training
    photos, k-NN on their embeddings, relative Mahalanobis distance): AUROC, FPR@95, and accuracy at the
    threshold keeping 95% of the known val photos; and the AUROC against the new classes' val photos
    alone (`unknown_in_val`): most photos of the new classes are from the train split, taken where the
    known classes' training photos were, while the known photos scored are val photos."""
    import numpy as np

    from retail_vision.artifacts import load_predictor
    from retail_vision.classifier import class_directions
    from retail_vision.evaluation.metrics import open_set
    from retail_vision.rejection import rejection_scores, threshold_keeping

    predictor = load_predictor(run_dir)
    outputs = {name: predictor.outputs(photos.images) for name, photos in
               (("known", known_val), ("unknown", unknown), ("train", known_train))}
    directions = class_directions(predictor.model)
    train_labels = np.array([predictor.labels.index(label) for label in known_train.labels])
    means = np.stack([outputs["train"]["embedding"][train_labels == c].mean(axis=0) for c in range(len(directions.T))])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    truth = np.array([predictor.labels.index(label) for label in known_val.labels])
    relative_mahalanobis = RelativeMahalanobis(outputs["train"]["embedding"], train_labels)
    rows = []
    for score in ("msp", "max_logit", "energy", "cosine", "cosine_class_mean", "knn_1", "knn_5",
                  "relative_mahalanobis"):
        values = {}
        for part in ("known", "unknown"):
            o = outputs[part]
            if score == "cosine_class_mean":
                values[part] = (o["embedding"] @ means.T).max(axis=1)
            elif score.startswith("knn"):
                k = int(score.split("_")[1])
                values[part] = np.sort(o["embedding"] @ outputs["train"]["embedding"].T, axis=1)[:, -k:].mean(axis=1)
            elif score == "relative_mahalanobis":
                values[part] = relative_mahalanobis(o["embedding"])
            else:
                values[part] = np.asarray(rejection_scores(score, o["probabilities"], o["logits"], o["embedding"],
                                                           directions))
        right = outputs["known"]["probabilities"].argmax(axis=1) == truth
        threshold = threshold_keeping(values["known"], 0.95)
        measured = open_set(values["known"], values["unknown"], right, threshold)
        new_val = open_set(values["known"], values["unknown"][np.asarray(unknown_in_val)], right, threshold)
        rows.append({"score": score, **{key: measured[key] for key in (
            "auroc", "fpr_at_95_tpr", "accuracy_at_threshold", "known_accepted", "unknown_rejected")},
            "auroc_new_val": new_val["auroc"]})
    return rows


class RelativeMahalanobis:
    """Minus the squared Mahalanobis distance to the nearest class mean of the training embeddings, less
    that to their overall mean (Ren et al., 2021, "A simple fix to Mahalanobis distance"): covariances
    shared by the classes, Ledoit-Wolf shrunk (1,280 dimensions, ~2,000 photos)."""

    def __init__(self, train, labels):
        import numpy as np
        from sklearn.covariance import LedoitWolf

        _, index = np.unique(labels, return_inverse=True)
        means = np.stack([train[index == c].mean(axis=0) for c in range(index.max() + 1)])
        # Whitened by the shared covariance, each squared distance to a class mean is a squared
        # Euclidean one: one matrix product for every photo and class (scipy's cdist takes each pair alone).
        self.whiten = np.linalg.cholesky(LedoitWolf().fit(train - means[index]).precision_)
        self.means = means @ self.whiten
        self.background = LedoitWolf().fit(train)

    def __call__(self, embeddings):
        x = embeddings @ self.whiten
        to_class = (x**2).sum(axis=1)[:, None] - 2 * x @ self.means.T + (self.means**2).sum(axis=1)[None]
        return -(to_class.min(axis=1) - self.background.mahalanobis(embeddings))


def enroll_table(run_dir: str, work: str, new: list[str], folders: dict, known_val: Photos, seed: int,
                 tag: str) -> list[dict]:
    """The 20 new classes enrolled with k photos each (and with the iconic image): 81-way top-1 and time."""
    import numpy as np

    from retail_vision.artifacts import load_predictor
    from retail_vision.enrollment import enroll

    rng = random.Random(seed)
    order = {name: rng.sample(photos("train", name, folders), len(photos("train", name, folders))) for name in new}
    before = load_predictor(run_dir)
    size, resize = before.image_size, before.resize
    known_before = float(np.mean(before.predict(known_val.images).argmax(axis=1)
                                 == [before.labels.index(c) for c in known_val.labels]))
    known_outputs = before.outputs(known_val.images)
    new_val = [(p, name) for name in new for p in photos("val", name, folders)]
    rows = []
    for shots in (*SHOTS, "iconic"):
        chosen = {name: ([iconic_image(name)] if shots == "iconic" else order[name][:shots]) for name in new}
        folder = os.path.join(work, f"enroll-{shots}")
        for name, files in chosen.items():
            os.makedirs(os.path.join(folder, name), exist_ok=True)
            for file in files:
                link = os.path.join(folder, name, os.path.basename(file))
                if not os.path.islink(link):
                    os.symlink(file, link)
        rest = [(p, name) for name in new for p in order[name] if p not in chosen[name]] + new_val
        evaluation = Photos([p for p, _ in rest], [n for _, n in rest], size, resize)
        started = time.perf_counter()
        result = enroll(run_dir, folder, output=os.path.join(work, f"exported-{tag}-{shots}"))
        seconds = time.perf_counter() - started
        after = load_predictor(result.version_dir)
        index = {label: i for i, label in enumerate(after.labels)}
        probabilities = after.predict(evaluation.images)
        hits = probabilities.argmax(axis=1) == [index[c] for c in evaluation.labels]
        # How well the prototypes tell the new classes apart, with the known classes out of the race.
        new_columns = [index[c] for c in new]
        among_new = np.array(new_columns)[probabilities[:, new_columns].argmax(axis=1)] == [
            index[c] for c in evaluation.labels]
        is_val = np.array([p in dict(new_val) for p in evaluation.paths])
        known = after.predict(known_val.images).argmax(axis=1) == [index[c] for c in known_val.labels]
        ceiling = map_ceiling(before, known_outputs, known_val, Photos(
            [p for name in new for p in chosen[name]], [name for name in new for _ in chosen[name]], size, resize),
            evaluation, new)
        rows.append({"shots": shots, "new_top1": float(hits.mean()), "new_among_new_top1": float(among_new.mean()),
                     "new_photos": len(hits),
                     "new_val_top1": float(hits[is_val].mean()), "new_val_photos": int(is_val.sum()),
                     "known_top1_before": known_before, "known_top1_after": float(known.mean()),
                     "new_top1_best_map": ceiling, "enroll_seconds": round(seconds, 1), "version": result.version_dir})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def map_ceiling(before, known_outputs: dict, known_val: Photos, enrollment: Photos, evaluation: Photos,
                new: list[str]) -> float:
    """The best 81-way top-1 of the new classes' evaluation photos that any (scale, bias, gate) of enroll's
    grid reaches, chosen on those very photos under enroll's bound on the known val photos: what the
    best choice of the map could give; what it leaves is the features'."""
    import numpy as np

    from retail_vision.classifier import LOGITS_LAYER
    from retail_vision.enrollment import MAX_KNOWN_DROP, MapGrid, Scored, known_drop, nearest_mean, trained_means

    layer = before.model.get_layer(LOGITS_LAYER)
    means = trained_means(layer, [])
    grid = MapGrid(float(np.mean(layer.scale.numpy())), gated=means is not None)
    index = {name: i for i, name in enumerate(new)}
    shots = before.outputs(enrollment.images)["embedding"]
    shot_labels = np.array([index[c] for c in enrollment.labels])
    prototypes = np.stack([shots[shot_labels == c].mean(axis=0) for c in range(len(new))])
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    known = Scored(known_outputs["embedding"], known_outputs["logits"],
                   np.array([before.labels.index(c) for c in known_val.labels]))
    drop, _ = known_drop(grid, known, prototypes, means)
    outputs = before.outputs(evaluation.images)
    truth = np.array([index[c] for c in evaluation.labels])
    cosines = outputs["embedding"] @ prototypes.T
    own = cosines[np.arange(len(truth)), truth]
    rival = np.where(np.arange(len(new)) == truth[:, None], -np.inf, cosines).max(axis=1)  # same map: cosine decides
    won = (own > rival) & (grid.logits(own, nearest_mean(outputs["embedding"], means)) > outputs["logits"].max(axis=1))
    return float(np.where(drop <= MAX_KNOWN_DROP, won.mean(axis=-1), 0.0).max())


def enroll_int8(run_dir: str, work: str, tag: str, shots: int = 5) -> dict:
    """The k-shot enrollment into a version exported with an int8 classifier and embedder, as a device
    fleet would have it: wall time, and the int8 file's parity row. The known-class run is exported
    once (reused)."""
    from retail_vision.enrollment import enroll
    from retail_vision.export import export_model

    output = os.path.join(work, f"exported-{tag}-int8")
    source = os.path.join(output, "grocery_known", "1")
    if not os.path.isdir(source):
        export_model(run_dir, output=output, tflite_kinds=("int8",))
    photos = os.path.join(work, f"enroll-{shots}")
    if not os.path.isdir(photos):
        sys.exit(f"{photos}: no enrollment photos yet; run the enroll stage first (--stages enroll,enroll_int8)")
    started = time.perf_counter()
    result = enroll(source, photos)
    seconds = time.perf_counter() - started
    int8 = next(row for row in result.report["artifacts"] if row["artifact"] == "tflite:int8")
    keras = result.report["artifacts"][0]
    return {"shots": shots, "enroll_seconds": round(seconds, 1), "version": result.version_dir,
            "keras_top1_held_out": keras["top1"], "int8_top1_held_out": int8["top1"],
            "int8_agreement": int8["agreement"], "held_out_images": result.report["held_out_images"]}


def retrain(work: str, head: str, new: list[str], folders: dict, known_val: Photos, tag: str,
            overrides: list[str], recipe_file: str) -> dict:
    """The grocery recipe on all 81 classes: top-1 on the new classes' val photos and the known val photos."""
    import numpy as np

    from retail_vision.artifacts import load_predictor
    from retail_vision.recipe import Recipe
    from retail_vision.training import fit

    runs = os.path.join(work, f"runs-all-{tag}")
    finished = sorted(d for d in (os.listdir(runs) if os.path.isdir(runs) else ())
                      if os.path.isfile(os.path.join(runs, d, "metrics.json")))
    seconds = float("nan")
    if finished:
        run_dir = os.path.join(runs, finished[-1])
    else:
        started = time.perf_counter()
        run_dir = fit(Recipe.from_yaml(recipe_file, [f"model.head={head}", *overrides]), runs_dir=runs).run_dir
        seconds = time.perf_counter() - started
    predictor = load_predictor(run_dir)
    index = {label: i for i, label in enumerate(predictor.labels)}
    new_val = [(p, name) for name in new for p in photos("val", name, folders)]
    val = Photos([p for p, _ in new_val], [n for _, n in new_val], predictor.image_size, predictor.resize)
    return {"run_dir": run_dir, "fit_seconds": round(seconds, 1),
            "new_val_top1": float(np.mean(predictor.predict(val.images).argmax(axis=1) == [index[c] for c in val.labels])),
            "known_val_top1": float(np.mean(predictor.predict(known_val.images).argmax(axis=1)
                                            == [index[c] for c in known_val.labels]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="default: /tmp/retail-vision-open-world[-seedN]")
    parser.add_argument("--head", default="cosine", choices=("softmax", "cosine"))
    parser.add_argument("--stages", default="fit,reject,enroll,enroll_int8,retrain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for both fits (e.g. train.label_smoothing=0); needs --variant")
    parser.add_argument("--recipe", default=RECIPE, help="the recipe both fits train (default: the shipped grocery "
                        "recipe); another needs --variant")
    parser.add_argument("--variant", default="", help="names the runs, versions and results of --set overrides")
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    args.work = args.work or default_work(args.seed)
    changed = bool(args.overrides) or os.path.realpath(args.recipe) != os.path.realpath(RECIPE)
    if changed != bool(args.variant):
        parser.error("--set or --recipe and --variant go together: the variant names where its runs and results go")
    tag = f"{args.head}-{args.variant}" if args.variant else args.head
    tag += f"-seed{args.seed}" if args.seed else ""  # another split of the classes: its own runs and results

    from retail_vision.artifacts import load_predictor

    known, new, folders = split_classes(args.seed)
    print(f"known classes: {len(known)}; new: {len(new)}: {', '.join(new)}")
    # Stages may run in separate invocations: their results gather in one file per head.
    previous = os.path.join("benchmarks", "results", f"open_world_{tag}.json")
    results = json.load(open(previous, encoding="utf-8")) if os.path.isfile(previous) else {}
    results.update(head=args.head, seed=args.seed, new_classes=new, overrides=args.overrides,
                   recipe=os.path.relpath(args.recipe, REPO))
    run_dir, seconds = fit_known(args.work, args.head, known, folders, tag, args.overrides, args.recipe)
    if seconds == seconds:  # not NaN: this invocation trained it
        results["fit_seconds"] = seconds
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    results.update(run_dir=run_dir, known_val_top1=metrics["val_top1"],
                   calibration=metrics.get("calibration"))
    print(f"known-class run: {run_dir} ({seconds:.0f} s), val top-1 {metrics['val_top1']:.3f}, "
          f"calibration {metrics.get('calibration')}")
    predictor = load_predictor(run_dir)
    size, resize = predictor.image_size, predictor.resize
    known_val_pairs = [(p, n) for n in known for p in photos("val", n, folders)]
    known_val = Photos([p for p, _ in known_val_pairs], [n for _, n in known_val_pairs], size, resize)
    if "reject" in stages:
        unknown_photos = [(p, n, split) for n in new for split in ("train", "val") for p in photos(split, n, folders)]
        unknown_pairs = [(p, n) for p, n, _ in unknown_photos]
        in_val = [split == "val" for _, _, split in unknown_photos]
        train_pairs = [(p, n) for n in known for p in photos("train", n, folders)]
        rows = rejection_table(run_dir, known_val, Photos([p for p, _ in unknown_pairs], [n for _, n in unknown_pairs],
                                                          size, resize),
                               Photos([p for p, _ in train_pairs], [n for _, n in train_pairs], size, resize), in_val)
        results["rejection"] = rows
        print(f"rejection: {len(known_val.paths)} known val photos against {len(unknown_pairs)} photos of new classes "
              f"({sum(in_val)} of them val photos: auroc_new_val)")
        print(table(rows, list(rows[0])))
    if "enroll" in stages:
        results["enrollment"] = enroll_table(run_dir, args.work, new, folders, known_val, args.seed, tag)
    if "enroll_int8" in stages:
        results["enroll_int8"] = enroll_int8(run_dir, args.work, tag)
        print(results["enroll_int8"])
    if "retrain" in stages:
        results["retrain"] = retrain(args.work, args.head, new, folders, known_val, tag, args.overrides, args.recipe)
        print(results["retrain"])
    path = write_results(f"open_world_{tag}", results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
