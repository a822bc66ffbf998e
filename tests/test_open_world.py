"""Open world: unknown-product rejection, embeddings, and classes enrolled without training.

A tiny cosine-head model learns three colour classes; a black photo is the unknown product
(its top probability is below every validation photo's), a magenta class is enrolled.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from retail_vision import Recipe, enroll, fit
from retail_vision.artifacts import load_images, load_predictor
from retail_vision.cli import main
from retail_vision.export import export_model

from conftest import synthetic_image, tiny_recipe, write_class_folders

MAGENTA = (200, 40, 200)  # far from the three trained colours in the tiny model's features


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(run result, exported version, sample photos: known red, unknown black, new magenta, and the root)."""
    root = tmp_path_factory.mktemp("open_world")
    recipe = tiny_recipe(write_class_folders(root / "photos"), root / "runs", model={"head": "cosine"},
                         rejection={"keep_known": 1.0})
    # Strong label smoothing and no temperature keep the tiny model's probabilities off 1.0, so a
    # photo unlike the three colours scores visibly lower (and int8's rounding keeps the gap).
    recipe["train"].update(label_smoothing=0.6, calibrate=False)
    recipe["train"]["fine_tune"]["epochs"] = 0
    recipe["train"]["head"]["epochs"] = 6
    result = fit(Recipe.from_dict(recipe), verbose=0)
    samples = root / "samples"
    samples.mkdir()
    synthetic_image((200, 40, 40), size=(32, 32), seed=7).save(samples / "red.jpg")
    Image.new("RGB", (32, 32)).save(samples / "unknown.png")
    new = root / "new" / "magenta-soap"
    new.mkdir(parents=True)
    for i in range(3):
        synthetic_image(MAGENTA, seed=500 + i).save(new / f"magenta_{i}.jpg")
    synthetic_image(MAGENTA, size=(32, 32), seed=600).save(samples / "magenta.jpg")
    exported = export_model(result.run_dir, output=str(root / "exported"), tflite_kinds=("float32", "int8"),
                            allow_drop=True)
    return result, exported.version_dir, samples, root


@pytest.fixture(scope="module")
def enrolled_world(world):
    """A second tiny model, trained as a recipe would by default (the first is smoothed for the rejection
    tests), with more validation photos to rehearse enrollment on, and its export."""
    _, _, _, root = world
    recipe = tiny_recipe(write_class_folders(root / "more_photos", per_class=16), root / "runs_enrolled",
                         model={"head": "cosine"})
    recipe["train"]["fine_tune"]["epochs"] = 0
    recipe["train"]["head"]["epochs"] = 6
    result = fit(Recipe.from_dict(recipe), verbose=0)
    exported = export_model(result.run_dir, output=str(root / "exported_enrolled"),
                            tflite_kinds=("float32", "int8"), allow_drop=True)
    return result, exported.version_dir

def test_fit_sets_the_threshold_on_the_validation_photos(world):
    result, _, samples, _ = world
    stored = json.loads(open(os.path.join(result.run_dir, "rejection.json")).read())
    assert stored["score"] == "msp" and stored["keep_known"] == 1.0 and stored["images"] > 0
    assert result.metrics["rejection"] == stored
    predictor = load_predictor(result.run_dir)
    validation = json.loads(open(os.path.join(result.run_dir, "split.json")).read())["validation"]["paths"]
    images, _ = load_images(validation, 32)
    assert not predictor.classify(images).unknown.any()  # keep_known 1.0: every validation photo accepted
    images, _ = load_images([str(samples / "red.jpg"), str(samples / "unknown.png")], 32)
    assert predictor.classify(images).unknown.tolist() == [False, True]


def test_fit_keeps_each_class_mean_embedding_in_the_head(world):
    import numpy as np

    result, _, _, _ = world
    predictor = load_predictor(result.run_dir)
    train = json.loads(open(os.path.join(result.run_dir, "split.json")).read())["train"]
    images, failures = load_images(train["paths"], 32)
    assert not failures
    embeddings = predictor.outputs(images)["embedding"]
    layer = predictor.model.get_layer("logits")
    stored = layer.class_means.numpy().T
    for index, label in enumerate(result.labels):
        mean = embeddings[np.array(train["labels"]) == index].mean(axis=0)
        cosine = mean @ stored[index] / np.linalg.norm(mean) / np.linalg.norm(stored[index])
        assert cosine > 0.999, label
    assert not layer.gate.numpy().any()  # trained classes are not gated


def test_the_cosine_head_gives_the_same_outputs_from_the_embedding_as_from_the_photo(world):
    """What lets enroll's export skip a second backbone pass (export_model(embeddings=...))."""
    import numpy as np

    from retail_vision.classifier import head_outputs

    result, _, samples, _ = world
    predictor = load_predictor(result.run_dir)
    images, _ = load_images([str(samples / "red.jpg"), str(samples / "unknown.png")], 32)
    outputs = predictor.outputs(images)
    from_embedding = head_outputs(predictor.model).predict(outputs["embedding"], verbose=0)
    np.testing.assert_allclose(from_embedding["probabilities"], outputs["probabilities"], atol=1e-5)
    np.testing.assert_allclose(from_embedding["logits"], outputs["logits"], atol=1e-4)


def test_saved_model_answers_unknown_to_a_b64_request_in_a_fresh_process(world):
    _, version, samples, _ = world
    script = (
        "import sys, json, base64, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "request = [base64.b64encode(open(f, 'rb').read()).decode() for f in sys.argv[2:]]  # a REST body's b64\n"
        "images = tf.constant([base64.b64decode(b) for b in request])\n"
        "out = m.signatures['serving_default'](image_bytes=images)\n"
        "embedded = m.signatures['embed'](image_bytes=images)\n"
        "print(json.dumps({'labels': [l[0].decode() for l in out['labels'].numpy()],\n"
        "                  'unknown': out['unknown'].numpy().tolist(), 'dim': int(out['embedding'].shape[1]),\n"
        "                  'embed_outputs': sorted(embedded),\n"
        "                  'embed_diff': float(tf.reduce_max(tf.abs(embedded['embedding'] - out['embedding'])))}))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script, version, str(samples / "red.jpg"),
                                str(samples / "unknown.png")], capture_output=True, text=True, check=True)
    served = json.loads(completed.stdout.strip().splitlines()[-1])
    assert served["labels"] == ["red-apple", "unknown"] and served["unknown"] == [False, True]
    assert served["dim"] > 0
    # The embed signature: the same embedding, and nothing else.
    assert served["embed_outputs"] == ["embedding"] and served["embed_diff"] < 1e-5


def test_predict_prints_unknown_with_its_score(world):
    _, version, samples, _ = world
    for model in (version, os.path.join(version, "tiny.float32.tflite")):
        output = CliRunner().invoke(main, ["predict", model, str(samples / "red.jpg"), str(samples / "unknown.png")])
        assert output.exit_code == 0, output.output
        lines = dict(line.split(": ", 1) for line in output.output.strip().splitlines())
        assert lines[str(samples / "red.jpg")].startswith("red-apple"), model
        assert lines[str(samples / "unknown.png")].startswith("unknown (score "), model


def test_mediapipe_rejects_through_the_metadata_and_embeds_with_the_embedder_file(world):
    pytest.importorskip("mediapipe", reason="needs the [mediapipe] extra (installed by the dev extra and CI)")
    _, version, samples, _ = world
    script = (
        "import sys, json, mediapipe as mp\n"
        "from mediapipe.tasks.python import vision\n"
        "from mediapipe.tasks.python.core.base_options import BaseOptions\n"
        "folder, files = sys.argv[1], sys.argv[2:]\n"
        "def options(kind, name): return kind(base_options=BaseOptions(model_asset_path=folder + '/' + name))\n"
        "with vision.ImageClassifier.create_from_options(options(vision.ImageClassifierOptions, "
        "'tiny.int8.tflite')) as c:\n"
        "    names = [[x.category_name for x in c.classify(mp.Image.create_from_file(f)).classifications[0].categories]"
        " for f in files]\n"
        "with vision.ImageEmbedder.create_from_options(options(vision.ImageEmbedderOptions, "
        "'tiny.embedder.int8.tflite')) as e:\n"
        "    a, b, c = (e.embed(mp.Image.create_from_file(f)).embeddings[0] for f in files)\n"
        "    similar = [vision.ImageEmbedder.cosine_similarity(a, x) for x in (a, b, c)]\n"
        "print(json.dumps({'names': names, 'similar': similar}))\n"
    )
    files = [str(samples / name) for name in ("red.jpg", "unknown.png", "magenta.jpg")]
    completed = subprocess.run([sys.executable, "-c", script, version, *files], capture_output=True, text=True,
                               check=True)
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer["names"][0][:1] == ["red-apple"] and answer["names"][1] == []
    assert answer["similar"][0] == pytest.approx(1.0, abs=1e-3) and max(answer["similar"][1:]) < 0.999


def test_enroll_adds_a_class_that_every_artifact_names(world, enrolled_world, tmp_path):
    _, _, samples, root = world
    result, version = enrolled_world
    output = tmp_path / "exported"
    shutil.copytree(os.path.dirname(version), output / "tiny")
    enrolled = CliRunner().invoke(main, ["enroll", str(output / "tiny" / "1"), str(root / "new")])
    assert enrolled.exit_code == 0, enrolled.output
    new_version = enrolled.output.strip().splitlines()[-1]
    assert new_version == str(output / "tiny" / "2")
    assert open(os.path.join(new_version, "labels.txt")).read().split() == [*result.labels, "magenta-soap"]
    assert {"tiny.float32.tflite", "tiny.int8.tflite", "tiny.embedder.int8.tflite", "rejection.json"} <= set(
        os.listdir(new_version))
    report = json.loads(open(os.path.join(new_version, "export_report.json")).read())
    embedder = "tiny.embedder.int8.tflite"  # the backbone is unchanged: the source's file and parity row
    assert open(os.path.join(new_version, embedder), "rb").read() == open(os.path.join(version, embedder), "rb").read()
    assert {row["artifact"] for row in report["embedders"]} == {"tflite-embedder:float32", "tflite-embedder:int8"}
    source = str(output / "tiny" / "1")
    source_rows = json.loads(open(os.path.join(source, "export_report.json")).read())["embedders"]
    assert [{**row, "measured_in": source} for row in source_rows] == report["embedders"]
    assert report["enrollment"]["added"] == ["magenta-soap"] and report["enrollment"]["photos"]["magenta-soap"] == 3
    # The tiny backbone's embeddings of any two photos are nearly parallel, so what known classes
    # lose to a prototype is measured on real photos (benchmarks/open_world.py), not here.
    images, _ = load_images([str(samples / "magenta.jpg")], 32)
    for artifact in (new_version, os.path.join(new_version, "tiny.int8.tflite")):
        predictor = load_predictor(artifact)
        assert predictor.labels[predictor.predict(images).argmax()] == "magenta-soap", artifact
    rows = {row["artifact"]: row for row in report["artifacts"]}
    assert rows["saved_model:image_bytes"]["agreement"] == 1.0 and rows["tflite:float32"]["agreement"] == 1.0
    assert rows["keras"]["size_bytes"] == os.path.getsize(os.path.join(new_version, "model.keras"))
    removed = enroll(new_version, None, remove=("magenta-soap",))  # carried on again: still names where measured
    assert {row["measured_in"] for row in removed.report["embedders"]} == {source}
    if importlib.util.find_spec("mediapipe"):  # as a device client runs it: MediaPipe, a fresh process
        script = (
            "import sys, mediapipe as mp\n"
            "from mediapipe.tasks.python import vision\n"
            "from mediapipe.tasks.python.core.base_options import BaseOptions\n"
            "options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=sys.argv[1]), "
            "max_results=1)\n"
            "with vision.ImageClassifier.create_from_options(options) as c:\n"
            "    print(c.classify(mp.Image.create_from_file(sys.argv[2])).classifications[0].categories[0]"
            ".category_name)\n"
        )
        named = subprocess.run([sys.executable, "-c", script, os.path.join(new_version, "tiny.int8.tflite"),
                                str(samples / "magenta.jpg")], capture_output=True, text=True, check=True)
        assert named.stdout.strip().splitlines()[-1] == "magenta-soap"


def test_enroll_replaces_and_removes_classes(world, enrolled_world, tmp_path):
    _, _, _, root = world
    result, _ = enrolled_world
    removed = enroll(result.run_dir, None, output=str(tmp_path), remove=("green-pear",))
    assert open(os.path.join(removed.version_dir, "labels.txt")).read().split() == [
        label for label in result.labels if label != "green-pear"]
    relearn = tmp_path / "relearn" / "blue-carton"
    shutil.copytree(root / "new" / "magenta-soap", relearn)
    replaced = enroll(result.run_dir, str(relearn.parent), output=str(tmp_path), replace=True)
    images, _ = load_images([str(root / "samples" / "magenta.jpg")], 32)
    predictor = load_predictor(replaced.version_dir)
    assert predictor.labels[predictor.predict(images).argmax()] == "blue-carton"  # magenta photos now say blue-carton
    assert replaced.report["enrollment"]["replaced"] == ["blue-carton"]


def test_a_model_trained_before_class_means_still_enrolls_without_the_gate(world, enrolled_world, tmp_path, capsys):
    import keras

    from retail_vision.classifier import CosineLogits

    _, _, _, root = world
    result, _ = enrolled_world
    legacy = tmp_path / "legacy-run"
    shutil.copytree(result.run_dir, legacy)
    trained = result.model.get_layer("logits")
    logits = CosineLogits(trained.units, trained.initial_scale, dtype="float32", name="logits")  # no means
    features = result.model.get_layer("head_dropout").output
    model = keras.Model(result.model.input, keras.layers.Softmax(name="predictions")(logits(features)))
    logits.set_weights([trained.kernel.numpy(), trained.scale.numpy(), trained.bias.numpy()])
    model.save(legacy / "model.keras")

    enrolled = enroll(str(legacy), str(root / "new"), output=str(tmp_path / "exported"))
    assert "carries no class means" in capsys.readouterr().err
    assert enrolled.report["enrollment"]["logit_map"]["gate"] == 0.0
    images, _ = load_images([str(root / "samples" / "magenta.jpg")], 32)
    predictor = load_predictor(enrolled.version_dir)
    assert predictor.labels[predictor.predict(images).argmax()] == "magenta-soap"


def test_export_with_data_fits_the_temperature_again_on_those_photos(world, enrolled_world, tmp_path):
    import numpy as np

    from retail_vision.artifacts import KerasPredictor, load_model

    _, _, _, root = world
    result, fixture_version = enrolled_world
    exported = CliRunner().invoke(main, ["export", result.run_dir, "--data", str(root / "photos"),
                                         "--output", str(tmp_path)])
    assert exported.exit_code == 0, exported.output
    version = exported.output.strip().splitlines()[-1]
    report = json.loads(open(os.path.join(version, "export_report.json")).read())
    calibrated = report["calibration"]
    assert calibrated["images"] == report["held_out_images"] > 0
    images, _ = load_images(json.loads(open(os.path.join(version, "split.json")).read())["validation"]["paths"], 32)
    before = KerasPredictor(*load_model(result.run_dir)).outputs(images)["logits"]
    after = KerasPredictor(*load_model(version)).outputs(images)["logits"]  # the graph every artifact came from
    np.testing.assert_allclose(after * calibrated["temperature"], before, rtol=1e-3, atol=1e-3)
    # Without --data (the fixture's export) the run's own temperature stays.
    assert json.loads(open(os.path.join(fixture_version, "export_report.json")).read())["calibration"] is None


@pytest.fixture(scope="module")
def softmax_run(world):
    _, _, _, root = world
    recipe = tiny_recipe(root / "photos", root / "runs_softmax", model={"head": "softmax"})
    recipe["train"]["fine_tune"]["epochs"] = 0
    return fit(Recipe.from_dict(recipe), verbose=0).run_dir


@pytest.mark.parametrize("case", ["existing label", "no readable photo", "exported before", "unknown label",
                                  "tflite file", "softmax head"])
def test_bad_enrollments_are_one_line_exit_2_and_write_nothing(world, softmax_run, tmp_path, case):
    result, version, _, root = world
    photos = tmp_path / "photos"
    model, extra = result.run_dir, []
    if case == "existing label":
        write_class_folders(photos, per_class=1, nested=False)
    elif case == "no readable photo":
        (photos / "broken-sku").mkdir(parents=True)
        (photos / "broken-sku" / "a.jpg").write_bytes(b"not a jpeg")
    elif case == "exported before":
        model = str(tmp_path / "old_version")
        shutil.copytree(version, model, ignore=shutil.ignore_patterns("model.keras"))
        shutil.copytree(root / "new", photos)
    elif case == "unknown label":
        shutil.copytree(root / "new", photos)
        extra = ["--remove", "purple-plum"]
    elif case == "tflite file":
        model = os.path.join(version, "tiny.int8.tflite")
        shutil.copytree(root / "new", photos)
    else:
        model = softmax_run
        shutil.copytree(root / "new", photos)
    output = tmp_path / "exported"
    outcome = CliRunner().invoke(main, ["enroll", model, str(photos), "--output", str(output), *extra])
    assert outcome.exit_code == 2, outcome.output
    error = outcome.output.strip().splitlines()[-1]
    assert error.startswith("error: ") and len(outcome.output.strip().splitlines()) == 1, outcome.output
    expected = {"existing label": "already knows: blue-carton, green-pear, red-apple", "no readable photo": "broken-sku",
                "exported before": "exported before enrollment", "unknown label": "purple-plum",
                "tflite file": "not a .tflite file", "softmax head": "train it with model.head: cosine"}[case]
    assert expected in error
    assert not output.exists()


def test_evaluate_scores_photos_of_other_classes_as_unknown_products(world, tmp_path):
    _, version, _, root = world
    data = tmp_path / "data"
    shutil.copytree(root / "photos" / "Fruit" / "Apple" / "red-apple", data / "red-apple")
    (data / "empty-shelf").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i, i, i)).save(data / "empty-shelf" / f"black_{i}.png")
    from retail_vision import evaluate

    results = evaluate(version, str(data), report_dir=str(tmp_path / "report"))
    open_world = results["open_world"]
    assert open_world["score"] == "msp" and open_world["unknown_images"] == 3 and open_world["known_images"] == 8
    assert open_world["unknown_rejected"] == 1.0 and open_world["auroc"] == 1.0
    assert results["images"] == 8 and results["classes_not_in_model"] == {"empty-shelf": 3}
    assert (tmp_path / "report" / "open_set.png").is_file()
    assert "unknown products: AUROC" in (tmp_path / "report" / "report.md").read_text()

    output = CliRunner().invoke(main, ["evaluate", version, str(data), "--classes", "known", "--json"])
    assert output.exit_code == 0, output.output
    known_only = json.loads(output.stdout)
    assert known_only["open_world"] is None and known_only["images"] == 8


def test_the_logit_map_keeps_the_known_classes_within_the_allowed_drop():
    import numpy as np

    from retail_vision.enrollment import Scored, choose_logit_map

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(11, 16)))  # 8 known classes, 3 new ones
    known_truth = np.repeat(np.arange(8), 6)
    known_embeddings = unit(centres[known_truth] + 0.6 * rng.normal(size=(48, 16)))
    known = Scored(known_embeddings, 10 * known_embeddings @ centres[:8].T, known_truth)
    means = unit(np.stack([known_embeddings[known_truth == c].mean(axis=0) for c in range(8)]))
    new_truth = np.repeat(np.arange(3), 4)
    new_embeddings = unit(centres[8 + new_truth] + 0.6 * rng.normal(size=(12, 16)))
    enrolled = Scored(new_embeddings, 10 * new_embeddings @ centres[:8].T, new_truth)
    prototypes = unit(np.stack([new_embeddings[new_truth == c].mean(axis=0) for c in range(3)]))

    strict = choose_logit_map(known, enrolled, prototypes, means, 10.0, max_known_drop=0.0)
    loose = choose_logit_map(known, enrolled, prototypes, means, 10.0, max_known_drop=20.0)
    assert strict.choice["known_drop_points"] <= 0.0 < loose.choice["known_drop_points"]
    assert loose.choice["recall"] > strict.choice["recall"]
    assert strict.choice["recall_from"] == "enrollment photos, each left out"
    # What the choice measured holds on the photos: the known ones' top-1 under the strict map.
    logits = np.concatenate([known.logits, strict.scale * (known_embeddings @ prototypes.T - strict.gate * (
        known_embeddings @ means.T).max(axis=1, keepdims=True)) + strict.bias], axis=1)
    assert np.mean(logits.argmax(axis=1) == known_truth) == np.mean(known.logits.argmax(axis=1) == known_truth)

    one_photo = Scored(new_embeddings[::4], enrolled.logits[::4], np.arange(3))  # nothing to leave out
    assert choose_logit_map(known, one_photo, prototypes, means, 10.0, 1.0).choice["recall_from"] == (
        "known classes standing in")
    # A class replaced or removed has no trained mean (a NaN row, by class column): the last one here.
    without_last = means.copy()
    without_last[7] = np.nan
    kept = known.rows(known.truth != 7)
    assert choose_logit_map(kept, one_photo, prototypes, without_last, 10.0, 1.0).choice["recall"] > 0


def test_known_classes_stand_in_for_one_photo_enrollments_with_one_photo_each():
    """With one photo per new class there is nothing to leave out, so known classes stand in; their
    prototypes must come from one photo as well, or the estimate is that of a bigger enrollment."""
    import numpy as np

    from retail_vision.enrollment import MapGrid, Scored, stand_in_recall

    u, w, v, z = np.eye(4)
    # Each class: two photos alike and a third unlike them. A prototype from one photo recognises one
    # of the two others at best; one from the two others (leave one out) would reach two of three.
    embeddings = np.stack([u, u, w, v, v, z])
    known = Scored(embeddings, np.zeros((6, 2)), np.repeat([0, 1], 3))  # the rival class's logit: 0
    grid = MapGrid(10.0, gated=False)
    recall, _ = stand_in_recall(grid, known, None, new_classes=1)
    # The candidates that take a photo at cosine 0.7 but not one at 0.
    takes = (grid.logits(np.array(0.7), 0.0) > 0) & (grid.logits(np.array(0.0), 0.0) < 0)
    assert takes.any()
    assert 0 < recall[takes[..., 0]].max() <= 0.5


def test_the_runs_report_shows_calibration_before_and_after_the_temperature(enrolled_world):
    result, _ = enrolled_world
    report = os.path.join(result.run_dir, "report")
    metrics = json.loads(open(os.path.join(report, "metrics.json")).read())
    assert metrics["ece_before_temperature"] == pytest.approx(result.metrics["calibration"]["ece_uncalibrated"],
                                                             abs=0.02)
    assert os.path.isfile(os.path.join(report, "reliability_before.png"))
    assert "Calibration before the temperature" in open(os.path.join(report, "report.md")).read()


def test_every_enrollment_problem_is_named_at_once(world, tmp_path):
    result, _, _, _ = world
    photos = write_class_folders(tmp_path / "photos", per_class=1, nested=False)
    (photos / "broken-sku").mkdir()
    (photos / "broken-sku" / "a.jpg").write_bytes(b"not a jpeg")
    outcome = CliRunner().invoke(main, ["enroll", result.run_dir, str(photos), "--remove", "purple-plum",
                                        "--output", str(tmp_path / "exported")])
    assert outcome.exit_code == 2
    lines = outcome.output.strip().splitlines()
    assert lines[0] == "error: enroll: 3 problems:" and len(lines) == 4
    assert "already knows" in lines[1] and "purple-plum" in lines[2] and "broken-sku" in lines[3]
    assert not (tmp_path / "exported").exists()


def test_the_cosine_head_gates_an_enrolled_class_by_the_nearest_trained_mean():
    """The graph computes what enrollment chose: scale * (cos - gate * nearest trained mean's cos) + bias."""
    import numpy as np

    from retail_vision.classifier import CosineLogits

    def unit(v):
        return v / np.linalg.norm(v, axis=0, keepdims=True)

    rng = np.random.default_rng(0)
    kernel, means = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    scale, bias, gate = np.array([10.0, 10.0, 30.0]), np.array([0.0, 0.0, -2.0]), np.array([0.0, 0.0, 0.75])
    layer = CosineLogits(3, with_means=True)
    layer.build((None, 8))
    layer.set_weights([kernel, scale, bias, means, gate])
    features = rng.normal(size=(5, 8))
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    nearest = (normed @ unit(means)[:, :2]).max(axis=1, keepdims=True)  # classes 0 and 1: gate 0, trained
    expected = scale * (normed @ unit(kernel) - gate * nearest) + bias
    np.testing.assert_allclose(np.asarray(layer(features.astype(np.float32))), expected, rtol=1e-4, atol=1e-4)
