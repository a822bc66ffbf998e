"""The open-world benchmark over several class splits: each split's acceptance numbers, their mean and its
standard error.

    python benchmarks/open_world_splits.py [--head cosine] [--variant NAME] [--seeds 0 1 2]
        [--against [VARIANT]]

Reads what `benchmarks/open_world.py --seed N` wrote (benchmarks/results/open_world_<tag>[-seedN].json,
stages fit, reject and enroll); runs nothing. One split of 20 new classes is one draw: which
products are new decides much of what enrollment and rejection can do (a new apple beside trained
apples is harder than a new milk), so the splits' spread says how far one split's number can be
trusted. `--against` adds each split's difference from another variant's run on the same split
(alone: from the shipped recipe), with its mean +- SE: the paired comparison of two recipes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import table  # noqa: E402

DEFAULT_SCORE = "msp"  # recipe.RejectionSpec's default
FRACTIONS = {"ece", "auroc", "auroc_new_val", "best_auroc", "best_gain"}  # the rest are in points


def split_numbers(results: dict) -> dict:
    """One split's acceptance numbers, in percent where the issue states them so."""
    row = {"seed": results["seed"], "known_val_top1": 100 * results["known_val_top1"],
           "ece": results["calibration"]["ece"]}
    for rejection in results.get("rejection", []):
        if rejection["score"] == DEFAULT_SCORE:
            row["auroc"] = rejection["auroc"]
            row["auroc_new_val"] = rejection["auroc_new_val"]
    best = max(results.get("rejection", []), key=lambda r: r["auroc"], default=None)
    if best and "auroc" in row:
        row["best_score"], row["best_auroc"] = best["score"], best["auroc"]
        row["best_gain"] = best["auroc"] - row["auroc"]  # paired: the same photos
    for enrolled in results.get("enrollment", []):
        shots = enrolled["shots"]
        row[f"new_top1_{shots}"] = 100 * enrolled["new_top1"]
        row[f"best_map_{shots}"] = 100 * enrolled["new_top1_best_map"]
        row[f"known_loss_{shots}"] = 100 * (enrolled["known_top1_before"] - enrolled["known_top1_after"])
    return row


def formatted(key: str, value: float) -> str:
    """Points as points, AUROC and ECE as fractions."""
    return f"{value:.{3 if key in FRACTIONS else 1}f}"


def mean_row(rows: list[dict]) -> dict:
    """Mean +- standard error over the splits (two or more) of every numeric column all of them have."""
    summary = {"seed": "mean +- SE"}
    for key in rows[0]:
        values = [row.get(key) for row in rows]
        if key == "seed" or not all(isinstance(v, (int, float)) for v in values):
            continue
        error = statistics.stdev(values) / len(values) ** 0.5
        summary[key] = f"{formatted(key, statistics.mean(values))} +- {formatted(key, error)}"
    return summary


def differences(rows: list[dict], against: list[dict]) -> list[dict]:
    """Each split's numbers minus the other recipe's on the same split (the same new classes and photos)."""
    return [{"seed": row["seed"], **{key: value - other[key] for key, value in row.items()
                                     if key != "seed" and isinstance(value, (int, float))
                                     and isinstance(other.get(key), (int, float))}}
            for row, other in zip(rows, against)]


def multiscale_gains(path: str) -> dict:
    """What `benchmarks/multiscale_enrollment.py` measured on a split: the picked w's 81-way top-1 of the new
    classes minus w = 0's (enroll as it is), in points, per number of photos; {} when it has not run."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        rows = json.load(handle)["rows"]
    plain = {row["shots"]: row["new_top1"] for row in rows if row["w"] == 0}
    return {f"multiscale_gain_{row['shots']}": 100 * (row["new_top1"] - plain[row["shots"]])
            for row in rows if row["picked"]}


def load_rows(head: str, variant: str, seeds: list[int], multiscale_layer: str) -> list[dict]:
    """Each seed's acceptance numbers; exits naming every results file missing and the command that writes it."""
    tag = f"{head}-{variant}" if variant else head
    rows, missing = [], []
    for seed in seeds:
        split_tag = f"{tag}{f'-seed{seed}' if seed else ''}"
        path = os.path.join("benchmarks", "results", f"open_world_{split_tag}.json")
        if not os.path.isfile(path):
            overrides = f" --variant {variant} and its --set overrides" if variant else ""
            missing.append(f"{path} (python benchmarks/open_world.py --head {head} --seed {seed} "
                           f"--stages fit,reject,enroll{overrides})")
            continue
        with open(path, encoding="utf-8") as handle:
            rows.append({**split_numbers(json.load(handle)), **multiscale_gains(os.path.join(
                "benchmarks", "results", f"multiscale_enrollment_{split_tag}_{multiscale_layer}.json"))})
    if missing:
        sys.exit("no results for:\n  " + "\n  ".join(missing))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default="cosine", choices=("softmax", "cosine"))
    parser.add_argument("--variant", default="", help="as open_world.py's --variant")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--against", nargs="?", const="", default=None, metavar="VARIANT",
                        help="also print each split's difference from this variant (alone: the shipped recipe)")
    parser.add_argument("--multiscale-layer", default="block6a_expand_conv",
                        help="whose multi-scale enrollment results to add, where they exist (multiscale_enrollment.py)")
    args = parser.parse_args()
    rows = load_rows(args.head, args.variant, args.seeds, args.multiscale_layer)
    tables = [rows]
    if args.against is not None:
        tables.append(differences(rows, load_rows(args.head, args.against, args.seeds, args.multiscale_layer)))
    columns = list(rows[0])
    groups = (["seed", "known_val_top1", "ece", "auroc", "auroc_new_val", "best_score", "best_auroc", "best_gain"],
              ["seed"] + [c for c in columns if c.startswith(("new_top1_", "best_map_"))],
              ["seed"] + [c for c in columns if c.startswith("known_loss_")],
              ["seed"] + [c for c in columns if c.startswith("multiscale_gain_")])
    for shown, title in zip(tables, ("", f"minus {args.against or 'the shipped recipe'}, split by split:\n")):
        print(title, end="")
        for group in groups:
            kept = [c for c in group if all(c in row for row in shown)]  # multi-scale: only where every split ran it
            if kept == ["seed"]:
                continue
            print(table([{k: formatted(k, v) if isinstance(v, float) else v for k, v in row.items()} for row in shown]
                        + ([mean_row(shown)] if len(shown) > 1 else []), kept))
            print()


if __name__ == "__main__":
    main()
