"""The open-world benchmark over several class splits: each split's acceptance numbers, their mean and its
standard error.

    python benchmarks/open_world_splits.py [--head cosine] [--variant NAME] [--seeds 0 1 2]

Reads what `benchmarks/open_world.py --seed N` wrote (benchmarks/results/open_world_<tag>[-seedN].json,
stages fit, reject and enroll); runs nothing. One split of 20 new classes is one draw: which
products are new decides much of what enrollment and rejection can do (a new apple beside trained
apples is harder than a new milk), so the splits' spread says how far one split's number can be
trusted.
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


def mean_row(rows: list[dict]) -> dict:
    """Mean +- standard error over the splits (two or more) of every numeric column all of them have."""
    summary = {"seed": "mean +- SE"}
    for key in rows[0]:
        values = [row.get(key) for row in rows]
        if key == "seed" or not all(isinstance(v, (int, float)) for v in values):
            continue
        mean = statistics.mean(values)
        error = statistics.stdev(values) / len(values) ** 0.5
        decimals = 1 if abs(mean) >= 1 else 3  # points as points, AUROC and ECE as fractions
        summary[key] = f"{mean:.{decimals}f} +- {error:.{decimals}f}"
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default="cosine", choices=("softmax", "cosine"))
    parser.add_argument("--variant", default="", help="as open_world.py's --variant")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    tag = f"{args.head}-{args.variant}" if args.variant else args.head
    rows, missing = [], []
    for seed in args.seeds:
        path = os.path.join("benchmarks", "results", f"open_world_{tag}{f'-seed{seed}' if seed else ''}.json")
        if not os.path.isfile(path):
            variant = f" --variant {args.variant} and its --set overrides" if args.variant else ""
            missing.append(f"{path} (python benchmarks/open_world.py --head {args.head} --seed {seed} "
                           f"--stages fit,reject,enroll{variant})")
            continue
        with open(path, encoding="utf-8") as handle:
            rows.append(split_numbers(json.load(handle)))
    if missing:
        sys.exit("no results for:\n  " + "\n  ".join(missing))
    columns = list(rows[0])
    groups = (["seed", "known_val_top1", "ece", "auroc", "auroc_new_val", "best_score", "best_auroc", "best_gain"],
              ["seed"] + [c for c in columns if c.startswith(("new_top1_", "best_map_"))],
              ["seed"] + [c for c in columns if c.startswith("known_loss_")])
    for group in groups:
        print(table(rows + ([mean_row(rows)] if len(rows) > 1 else []), [c for c in group if c in columns]))
        print()


if __name__ == "__main__":
    main()
