"""Evaluation: metrics against hand-computed values, the report folder, and evaluate() end to end."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import re
import shutil

import numpy as np
import pytest

from retail_vision import Recipe, fit
from retail_vision.evaluation import evaluator as evaluate_module
from retail_vision.data.sources import load_examples
from retail_vision.errors import DataError
from retail_vision.evaluation.evaluator import evaluate
from retail_vision.evaluation import metrics
from retail_vision.evaluation.report import format_summary, write_report

from conftest import synthetic_image, tiny_recipe, write_class_folders

# Six predictions over four classes; class "d" has no images, row 1 is a tie (a/b), row 4 gives the
# true class probability 0 (log loss must clip it). Confidences avoid the ECE bin edges (k/15).
LABELS = ["a", "b", "c", "d"]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([
    [0.70, 0.20, 0.10, 0.00],  # a -> a   conf .70
    [0.45, 0.45, 0.10, 0.00],  # a -> a   tie a/b: the lower index wins
    [0.10, 0.82, 0.08, 0.00],  # b -> b   conf .82
    [0.55, 0.30, 0.15, 0.00],  # b -> a   wrong, conf .55
    [0.38, 0.00, 0.00, 0.62],  # c -> d   wrong, conf .62; c is not even in the top 2
    [0.17, 0.17, 0.66, 0.00],  # c -> c   conf .66
])
COARSE = {"a": "X", "b": "X", "c": "Y", "d": "Z"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_metrics_match_hand_computed_values():
    result = metrics.compute(Y_TRUE, PROBS, LABELS, COARSE)
    assert result["images"] == 6
    assert result["top1"] == pytest.approx(4 / 6)
    assert metrics.top_k_accuracy(metrics.Ranked.of(Y_TRUE, PROBS), 2) == pytest.approx(5 / 6)
    assert result["top5"] == 1.0  # only 4 classes: top-5 is top-4
    # Per class: a P=2/3 R=1 F1=0.8; b and c P=1 R=0.5 F1=2/3; d has no support but was predicted once.
    assert result["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert result["per_class"]["b"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert result["per_class"]["d"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    # Macro averages and balanced accuracy leave out d (no support).
    assert result["macro_precision"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert result["macro_recall"] == pytest.approx(2 / 3)
    assert result["balanced_accuracy"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 2 / 3) / 3)
    true_probs = [0.70, 0.45, 0.82, 0.30, 1e-15, 0.66]
    assert result["log_loss"] == pytest.approx(-sum(map(math.log, true_probs)) / 6)
    # Bins: .70 ok | .45 ok | .82 ok | .55 wrong | {.62 wrong, .66 ok}: (.30+.55+.18+.55)/6 + 2/6*|.5-.64|.
    assert result["ece"] == pytest.approx(0.31)
    assert result["top_confusions"] == [{"true": "b", "predicted": "a", "count": 1},
                                        {"true": "c", "predicted": "d", "count": 1}]
    assert result["coarse_top1"] == pytest.approx(5 / 6)  # only c -> d leaves its group
    assert metrics.compute(Y_TRUE, PROBS, LABELS)["coarse_top1"] is None
    json.dumps(result, allow_nan=False)  # JSON-ready: no numpy types, no NaN


def test_ties_go_to_the_lowest_class_index():
    flat = np.full((1, 4), 0.25)
    assert metrics.compute(np.array([0]), flat, LABELS)["top1"] == 1.0
    assert metrics.compute(np.array([1]), flat, LABELS)["top1"] == 0.0
    assert metrics.top_k_accuracy(metrics.Ranked.of(np.array([1]), flat), 2) == 1.0  # top-2 = {a, b}
    assert metrics.top_k_accuracy(metrics.Ranked.of(np.array([2]), flat), 2) == 0.0
    assert metrics.ranked_classes(np.array([[0.1, 0.3, 0.3, 0.3]]), 3).tolist() == [[1, 2, 3]]


def test_compute_rejects_probabilities_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"probs: expected shape \(6, 3\)"):
        metrics.compute(Y_TRUE, PROBS, LABELS[:3])


def test_report_writes_every_file_and_links_them(tmp_path):
    photos = []
    for i in range(len(Y_TRUE)):
        photos.append(str(tmp_path / f"photo_{i}.png"))
        synthetic_image((40 * i, 100, 200), size=(64, 48), seed=i).save(photos[-1])
    skipped = [{"path": "x.jpg", "reason": "zero-byte file"}]
    results = {"model": "m", "data": "d", "hierarchy": None, "skipped_files": skipped,
               **metrics.compute(Y_TRUE, PROBS, LABELS, COARSE)}
    history = {"loss": [1.0, 0.8, 0.6], "accuracy": [0.5, 0.6, 0.7], "val_loss": [1.1, 0.9, 0.8],
               "val_accuracy": [0.4, 0.5, 0.6], "phase": ["head", "head", "fine_tune"]}
    report = tmp_path / "report"
    write_report(str(report), results, photos, metrics.Ranked.of(Y_TRUE, PROBS), LABELS, top_k=3, groups=COARSE,
                 history=history)

    for name in ("confusion_matrix.png", "worst_mistakes.png", "reliability.png", "training_curves.png"):
        data = (report / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1024, name
    markdown = (report / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", markdown)
    assert {"confusion_matrix.png", "worst_mistakes.png", "reliability.png", "training_curves.png",
            "metrics.json", "predictions.csv"} <= set(links)
    assert all((report / link).is_file() for link in links)
    assert "x.jpg" in markdown and "| b | a | 1 |" in markdown

    rows = list(csv.DictReader((report / "predictions.csv").open()))
    assert list(rows[0]) == ["file", "true", "predicted", "confidence", "top_k"]
    assert sum(row["true"] == row["predicted"] for row in rows) / len(rows) == pytest.approx(results["top1"])
    assert rows[1]["predicted"] == "a" and rows[1]["top_k"] == "a:0.4500|b:0.4500|c:0.1000"
    assert json.loads((report / "metrics.json").read_text())["top1"] == pytest.approx(4 / 6)
    matrix = list(csv.reader((report / "confusion_matrix.csv").open()))
    assert matrix[0][1:] == LABELS and matrix[2] == ["b", "1", "1", "0", "0"]


def test_a_report_on_thousands_of_classes_draws_the_most_confused_and_lists_the_rest_in_csv(tmp_path, monkeypatch):
    from retail_vision.evaluation import plots, report as report_module

    classes = 2000
    labels = [f"sku-{i:04d}" for i in range(classes)]
    y_true = np.arange(classes)
    y_pred = y_true.copy()
    y_pred[[10, 11, 12]] = [1500, 1500, 7]  # the mistakes: 10 -> 1500, 11 -> 1500, 12 -> 7
    probs = np.full((classes, classes), 0.1 / classes)
    probs[y_true, y_pred] = 0.9
    photo = tmp_path / "photo.png"
    synthetic_image((90, 100, 200), size=(32, 32)).save(photo)
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault(pathlib.Path(path).name, fig))
    results = {"model": "m", "data": "d", "hierarchy": None, "skipped_files": [],
               **metrics.compute(y_true, probs, labels)}
    write_report(str(tmp_path / "report"), results, [str(photo)] * classes, metrics.Ranked.of(y_true, probs), labels)

    axes = drawn["confusion_matrix.png"].axes[0]
    names = [tick.get_text() for tick in axes.get_xticklabels()]
    assert len(names) == report_module.MATRIX_CLASSES
    assert {"sku-0010", "sku-1500", "sku-0011", "sku-0012", "sku-0007"} <= set(names)
    assert "most confused of 2000 classes" in axes.get_title()
    per_class = list(csv.DictReader((tmp_path / "report" / "per_class.csv").open()))
    assert len(per_class) == classes and per_class[10]["recall"] == "0.0"
    markdown = (tmp_path / "report" / "report.md").read_text()
    table_rows = [line for line in markdown.splitlines() if line.startswith("| sku-") and line.count("|") == 6]
    assert len(table_rows) == report_module.PER_CLASS_ROWS and table_rows[0].startswith("| sku-0010 |")
    assert f"and {classes - report_module.PER_CLASS_ROWS} more classes in [per_class.csv]" in markdown


def test_summary_lists_top_confusions_as_text():
    results = {"model": "m", "data": "d", "images": 6, "skipped_files": [], **metrics.compute(Y_TRUE, PROBS, LABELS)}
    text = format_summary(results)
    assert "b -> a: 1" in text and "c -> d: 1" in text
    assert re.search(r"top-1 accuracy\s+66\.67%", text)
    assert "n/a (no hierarchy)" in text


# === End to end, on a tiny model trained once for this module ===

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("evaluate")
    photos = write_class_folders(root / "photos")
    # A Grocery-Store-style hierarchy next to the data folder: found without being named.
    (root / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int)\n"
        "red-apple,0,Fruit,0\ngreen-pear,1,Fruit,0\nblue-carton,2,Carton,1\n"
    )
    return fit(Recipe.from_dict(tiny_recipe(photos, root / "runs")), verbose=0), photos


def test_evaluate_end_to_end_on_a_trained_run(tiny_run, tmp_path):
    result, photos = tiny_run
    data = shutil.copytree(photos, tmp_path / "photos")
    shutil.copy(photos.parent / "classes.csv", tmp_path)
    (data / "Fruit" / "green-pear" / "broken.jpg").write_bytes(b"not a jpeg")
    report = tmp_path / "report"

    scored = evaluate(result.run_dir, str(data), report_dir=str(report))

    documented = set(re.findall(r"^    (\w+) ", evaluate_module.__doc__, re.MULTILINE))
    assert set(scored) == documented  # every key is documented, and nothing documented is missing
    assert scored["images"] == 24 and scored["classes"] == 3
    assert [s["path"] for s in scored["skipped_files"]] == [str(data / "Fruit" / "green-pear" / "broken.jpg")]
    assert scored["hierarchy"] == str(tmp_path / "classes.csv")
    assert scored["coarse_top1"] is not None and scored["coarse_top1"] >= scored["top1"]
    # Colours are easy (the seeded run scores 0.92); labels matched by the wrong order would score ~1/3.
    assert scored["top1"] > 0.6
    assert (report / "training_curves.png").read_bytes().startswith(PNG_MAGIC)  # a run directory has history.json
    rows = list(csv.DictReader((report / "predictions.csv").open()))
    assert len(rows) == 24
    assert sum(row["true"] == row["predicted"] for row in rows) / 24 == pytest.approx(scored["top1"])
    json.dumps(scored, allow_nan=False)


def test_evaluate_matches_classes_by_name_and_lists_unknown_ones(tiny_run, tmp_path):
    result, _ = tiny_run
    # Flat folders list the classes as blue-carton, green-pear, red-apple: not the model's order.
    flat = write_class_folders(tmp_path / "flat", nested=False)
    assert load_examples(str(flat)).class_names != ["red-apple", "green-pear", "blue-carton"]
    assert evaluate(result.run_dir, str(flat))["top1"] > 0.6

    data = write_class_folders(tmp_path / "other", per_class=2, nested=False)
    (data / "green-pear").rename(data / "yellow-lemon")
    (data / "blue-carton").rename(data / "oat-milk")
    partly_known = evaluate(result.run_dir, str(data))  # scored on the class it knows, never refused
    assert partly_known["images"] == 2 and partly_known["classes_not_in_model"] == {"oat-milk": 2, "yellow-lemon": 2}
    one_class = evaluate(result.run_dir, str(data / "red-apple"))  # one new batch of one product
    assert one_class["images"] == 2 and one_class["classes_not_in_model"] == {}
    (data / "red-apple").rename(data / "plum")
    with pytest.raises(DataError, match=r"other: none of its 3 class\(es\) is a class of the model: oat-milk, plum"):
        evaluate(result.run_dir, str(data))


def test_explicit_hierarchy_must_cover_every_model_class(tiny_run, tmp_path):
    result, photos = tiny_run
    hierarchy = tmp_path / "coarse.csv"
    hierarchy.write_text("red-apple,0,Fruit,0\n")
    with pytest.raises(DataError, match=r"coarse.csv: no coarse class for 2 model class\(es\): green-pear, blue-"):
        evaluate(result.run_dir, str(photos), hierarchy=str(hierarchy))


def test_run_report_of_the_in_memory_model_matches_the_saved_one(tiny_run):
    result, photos = tiny_run
    examples = load_examples(str(photos))
    in_memory = evaluate(result.predictor, examples)
    saved = evaluate(result.run_dir, str(photos))
    assert in_memory["top1"] == pytest.approx(saved["top1"])
    assert in_memory["log_loss"] == pytest.approx(saved["log_loss"], abs=1e-4)
    assert in_memory["hierarchy"] == str(photos.parent / "classes.csv")
    report = pathlib.Path(result.run_dir) / "report"
    for name in ("report.md", "metrics.json", "predictions.csv", "confusion_matrix.png", "training_curves.png"):
        assert (report / name).stat().st_size > 0, name


def test_a_report_without_confusions_says_so(tiny_run):
    from retail_vision.evaluation.report import markdown

    result, photos = tiny_run
    results = evaluate(result.run_dir, str(photos))
    text = markdown({**results, "top_confusions": []}, [])
    section = text.split("## Top confusions")[1].split("##")[0]
    assert "None: every image was classified right." in section and "| true |" not in section


def test_evaluation_never_holds_every_photos_probabilities_over_every_class(tmp_path, monkeypatch):
    """At 5,000 classes [photos, classes] float64 arrays are gigabytes: evaluate keeps only each photo's top classes."""
    import gc
    import tracemalloc

    from retail_vision import artifacts
    from retail_vision.artifacts import Classified, Predictor
    from retail_vision.data.sources import Examples
    from retail_vision.evaluation import plots

    photos, classes = 6000, 600
    all_probabilities_bytes = photos * classes * 8

    class ManyClasses(Predictor):
        def classify(self, images):
            probabilities = np.full((len(images), classes), 0.5 / (classes - 1))
            probabilities[:, 3] = 0.5  # every photo: class 3, at 50%
            return Classified(probabilities, None, None)

    labels = [f"sku-{i:04d}" for i in range(classes)]
    # Decoding and drawing are not what is measured here.
    monkeypatch.setattr(artifacts, "load_images", lambda paths, size, resize: (np.zeros((len(paths), 8, 8, 3)), []))
    monkeypatch.setattr(plots, "_save", lambda fig, path: None)

    def peak_memory(photos):
        examples = Examples(["photo.png"] * photos, [i % classes for i in range(photos)], labels)
        # Garbage left by earlier tests (TensorFlow's among it) would otherwise be collected inside one
        # measurement and not the other: a few MB either way, which failed this test after the suite's
        # earlier tests on one machine and passed alone.
        gc.collect()
        tracemalloc.start()
        try:
            result = evaluate(ManyClasses(labels, 8), examples, report_dir=str(tmp_path / "report"), batch_size=64)
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()

    peak_memory(600)  # imports (matplotlib...) happen here, outside what is compared
    small, _ = peak_memory(600)
    large, result = peak_memory(photos)
    assert result["top1"] == pytest.approx(1 / classes) and result["ece"] == pytest.approx(0.5 - 1 / classes)
    assert large - small < all_probabilities_bytes / 10, f"{small / 1e6:.1f} MB -> {large / 1e6:.1f} MB"
