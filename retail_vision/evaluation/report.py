"""Write an evaluation report folder and format the summary table the CLI prints.

    <report_dir>/
        report.md              the summary, tables and every picture, readable on GitHub or in an IDE
        metrics.json           the metrics dict of `retail_vision.evaluation.evaluator` (keys documented there)
        predictions.csv        file,true,predicted,confidence,top_k   (top_k: 'label:prob|label:prob...')
        confusion_matrix.csv   counts; rows true classes, columns predicted classes, model label order
        per_class.csv          class,precision,recall,f1,images for every class (report.md lists the worst)
        confusion_matrix.png, worst_mistakes.png, reliability.png
        reliability_before.png only with the calibration temperature: the diagram before it
        open_set.png           only when photos of unknown products were scored: both score histograms
        training_curves.png    only when the model comes with its run's history.json

No TensorFlow here: the report is built from file paths, labels and probabilities.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from retail_vision.evaluation import metrics as metrics_lib
from retail_vision.evaluation import plots
from retail_vision.run_directory import replaced

WORST_MISTAKES = 16
CONFUSIONS_SHOWN = 10
MATRIX_CLASSES = 100  # beyond this, the matrix picture shows the most confused classes (legible up to ~100)
PER_CLASS_ROWS = 100  # report.md's per-class table: the worst F1 first, every class in per_class.csv

PICTURES = {  # file -> section title, in report order
    "confusion_matrix.png": "Confusion matrix",
    "worst_mistakes.png": "Most confident mistakes",
    "reliability.png": "Calibration",
    "reliability_before.png": "Calibration before the temperature",
    "open_set.png": "Known and unknown products",
    "training_curves.png": "Training curves",
}


def write_report(report_dir: str, results: dict, paths: list[str], ranked: metrics_lib.Ranked, labels: list[str],
                 top_k: int = 5, groups: dict[str, str] | None = None, history: dict | None = None,
                 open_set_scores: tuple | None = None, confidence_before_temperature=None) -> None:
    """Write every file of the report; `results` is the metrics dict, `groups` orders the matrix.

    `ranked`: the photos' top classes (at least `top_k`) and true classes, in `paths` order.
    `open_set_scores`: (known photos' rejection scores, unknown photos', threshold), when scored.
    `confidence_before_temperature`: [N] top probabilities before the calibration temperature, for their diagram.
    """
    os.makedirs(report_dir, exist_ok=True)
    y_true, y_pred = ranked.y_true, ranked.y_pred
    matrix = metrics_lib.confusion_matrix(y_true, y_pred, len(labels))
    if confidence_before_temperature is not None:
        plots.plot_reliability(metrics_lib.calibration_bins(confidence_before_temperature, ranked.correct),
                               results["ece_before_temperature"], os.path.join(report_dir, "reliability_before.png"))
    _write_json(os.path.join(report_dir, "metrics.json"), results)
    _write_predictions(os.path.join(report_dir, "predictions.csv"), paths, ranked, labels, top_k)
    _write_matrix(os.path.join(report_dir, "confusion_matrix.csv"), matrix, labels)
    _write_per_class(os.path.join(report_dir, "per_class.csv"), results["per_class"])

    shown = metrics_lib.most_confused_classes(matrix, labels, MATRIX_CLASSES) if len(labels) > MATRIX_CLASSES else None
    plots.plot_confusion_matrix(matrix, labels, os.path.join(report_dir, "confusion_matrix.png"), groups, shown=shown)
    wrong = _most_confident_mistakes(ranked)
    plots.plot_worst_mistakes(
        [paths[i] for i in wrong], [labels[y_true[i]] for i in wrong], [labels[y_pred[i]] for i in wrong],
        [float(ranked.confidence[i]) for i in wrong], os.path.join(report_dir, "worst_mistakes.png"),
    )
    plots.plot_reliability(metrics_lib.calibration_bins(ranked.confidence, ranked.correct), results["ece"],
                           os.path.join(report_dir, "reliability.png"))
    if open_set_scores is not None:
        plots.plot_open_set(*open_set_scores, results["open_world"]["score"], os.path.join(report_dir, "open_set.png"))
    if history and history.get("loss"):
        plots.plot_training_curves(history, os.path.join(report_dir, "training_curves.png"))
    pictures = [name for name in PICTURES if os.path.isfile(os.path.join(report_dir, name))]
    with replaced(os.path.join(report_dir, "report.md")) as temporary:
        with open(temporary, "w", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(markdown(results, pictures))


def _most_confident_mistakes(ranked: metrics_lib.Ranked, limit: int = WORST_MISTAKES) -> list[int]:
    wrong = np.flatnonzero(~ranked.correct)
    return wrong[np.argsort(-ranked.confidence[wrong], kind="stable")][:limit].tolist()


def _write_predictions(path, paths, ranked: metrics_lib.Ranked, labels, top_k) -> None:
    top_k = min(top_k, len(labels))
    with replaced(path) as temporary, open(temporary, "w", encoding="utf-8", errors="backslashreplace",
                                           newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "predicted", "confidence", "top_k"])
        for file, true, classes, probs in zip(paths, ranked.y_true, ranked.classes, ranked.probabilities):
            top = "|".join(f"{labels[c]}:{p:.4f}" for c, p in zip(classes[:top_k], probs[:top_k]))
            writer.writerow([file, labels[true], labels[classes[0]], f"{probs[0]:.6f}", top])


def _write_per_class(path, per_class: dict) -> None:
    with replaced(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "precision", "recall", "f1", "images"])
            for name, s in per_class.items():
                writer.writerow([name, s["precision"], s["recall"], s["f1"], s["support"]])


def _write_matrix(path, matrix, labels) -> None:
    with replaced(path) as temporary, open(temporary, "w", encoding="utf-8", errors="backslashreplace",
                                           newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *labels])
        writer.writerows([name, *row.tolist()] for name, row in zip(labels, matrix))  # a row at a time: 25M ints at 5,000 classes


def _write_json(path, value) -> None:
    with replaced(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2)
        handle.write("\n")


# === Text: report.md and the CLI table ===

SUMMARY_ROWS = [  # (key, label, format)
    ("top1", "top-1 accuracy", "{:.2%}"),
    ("top5", "top-5 accuracy", "{:.2%}"),
    ("coarse_top1", "coarse top-1 (right group)", "{:.2%}"),
    ("balanced_accuracy", "balanced accuracy", "{:.2%}"),
    ("macro_precision", "macro precision", "{:.3f}"),
    ("macro_recall", "macro recall", "{:.3f}"),
    ("macro_f1", "macro F1", "{:.3f}"),
    ("log_loss", "log loss", "{:.3f}"),
    ("ece", "expected calibration error", "{:.3f}"),
    ("ece_before_temperature", "ECE before the temperature", "{:.3f}"),
]


OPEN_WORLD_ROWS = [  # (key of results["open_world"], label, format)
    ("auroc", "unknown products: AUROC", "{:.3f}"),
    ("fpr_at_95_tpr", "unknown accepted at 95% known kept", "{:.2%}"),
    ("known_accepted", "known photos accepted", "{:.2%}"),
    ("unknown_rejected", "unknown photos rejected", "{:.2%}"),
    ("accuracy_at_threshold", "open-world accuracy at threshold", "{:.2%}"),
]


def summary_rows(results: dict) -> list[tuple[str, str]]:
    rows = [(label, fmt.format(results[key]) if results.get(key) is not None else "n/a (no hierarchy)")
            for key, label, fmt in SUMMARY_ROWS if key != "ece_before_temperature" or results.get(key) is not None]
    if results.get("open_world"):
        rows += [(label, fmt.format(results["open_world"][key]) if results["open_world"][key] is not None else "n/a")
                 for key, label, fmt in OPEN_WORLD_ROWS]
    return rows


def format_summary(results: dict, confusions: int = CONFUSIONS_SHOWN) -> str:
    """The plain-text table `retail-vision evaluate` prints, top confusions as 'true -> predicted: n'."""
    lines = [f"model:   {results['model']}", f"data:    {results['data']}",
             f"images:  {results['images']} ({len(results['skipped_files'])} skipped)", ""]
    rows = summary_rows(results)
    width = max(len(label) for label, _ in rows)
    lines += [f"{label.ljust(width)}  {value}" for label, value in rows]
    lines += ["", "top confusions (true -> predicted: images):"]
    lines += [f"  {c['true']} -> {c['predicted']}: {c['count']}" for c in results["top_confusions"][:confusions]]
    if not results["top_confusions"]:
        lines.append("  none")
    for skipped in results["skipped_files"]:
        lines.append(f"skipped {skipped['path']}: {skipped['reason']}")
    lines += [_not_in_model(results)] if results.get("classes_not_in_model") else []
    return "\n".join(lines)


def _not_in_model(results: dict) -> str:
    left_out, shown = results["classes_not_in_model"], 10  # all of them are in metrics.json
    names = ", ".join(sorted(left_out)[:shown]) + (f", ... ({len(left_out) - shown} more)" if len(left_out) > shown else "")
    how = "scored as unknown products" if results.get("open_world") else "left out"
    return f"{how}: {sum(left_out.values())} photo(s) of {len(left_out)} class(es) the model does not know ({names})"


def markdown(results: dict, pictures: list[str]) -> str:
    """report.md: summary, pictures, top confusions, per-class table (worst F1 first), skipped files."""
    out = ["# Evaluation report", "",
           f"- model: `{results['model']}`", f"- data: `{results['data']}`",
           f"- images: {results['images']} scored, {len(results['skipped_files'])} skipped",
           *([f"- {_not_in_model(results)}"] if results.get("classes_not_in_model") else []),
           f"- hierarchy: {'`' + results['hierarchy'] + '`' if results.get('hierarchy') else 'none'}", "",
           "| metric | value |", "|---|---|"]
    out += [f"| {label} | {value} |" for label, value in summary_rows(results)]
    for name in pictures:
        out += ["", f"## {PICTURES[name]}", "", f"![{PICTURES[name]}]({name})"]
    out += ["", "## Top confusions", ""]
    if results["top_confusions"]:
        out += ["| true | predicted | images |", "|---|---|---|"]
        out += [f"| {_cell(c['true'])} | {_cell(c['predicted'])} | {c['count']} |" for c in results["top_confusions"]]
    else:
        out.append("None: every image was classified right.")
    out += ["", "## Per class (worst F1 first; classes with images in the data)", "",
            "| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
    scored = sorted(((name, s) for name, s in results["per_class"].items() if s["support"]),
                    key=lambda item: (item[1]["f1"], item[0]))
    for name, s in scored[:PER_CLASS_ROWS]:
        out.append(f"| {_cell(name)} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |")
    if len(scored) > PER_CLASS_ROWS:
        out += ["", f"... and {len(scored) - PER_CLASS_ROWS} more classes in [per_class.csv](per_class.csv)."]
    if results["skipped_files"]:
        out += ["", "## Skipped files", ""]
        out += [f"- `{s['path']}`: {s['reason']}" for s in results["skipped_files"]]
    out += ["", "Files: [metrics.json](metrics.json), [predictions.csv](predictions.csv), "
            "[confusion_matrix.csv](confusion_matrix.csv), [per_class.csv](per_class.csv)", ""]
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a '|' in a class name would split the Markdown table cell
