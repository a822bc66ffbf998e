"""The CLI contract: exit codes, one-line errors, nothing written on bad input, fast --help."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from retail_vision.cli import main

from conftest import synthetic_image, tiny_recipe, write_class_folders, write_recipe


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_answers_without_importing_tensorflow():
    code = "import sys; from retail_vision.cli import main; sys.argv=['rv','--help']\ntry: main()\nexcept SystemExit: pass\nprint('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "fit" in out and out.strip().endswith("False")


def test_backbones_lists_sizes_and_weight_sources():
    result = invoke("backbones")
    assert result.exit_code == 0
    assert "efficientnet_lite0" in result.output and "mobilenet_v3_small" in result.output
    assert "keras.applications" in result.output


def test_check_reports_classes_counts_and_skipped_files(image_folder, tmp_path):
    (image_folder / "Fruit" / "green-pear" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(image_folder, tmp_path / "runs"))
    result = invoke("check", recipe)
    assert result.exit_code == 0, result.output
    assert "classes:    3" in result.output and "train:      18 images" in result.output
    assert "validation: 6 images" in result.output and "broken.jpg: not an image" in result.output
    assert "phase head: 2 epochs of 3 steps (batch 8)" in result.output
    assert "expected:" in result.output and "fine_tune ~" in result.output
    assert not (tmp_path / "runs").exists()


def test_ordinary_commands_keep_tensorflows_start_up_lines_off_the_terminal(image_folder, tmp_path):
    import pathlib

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(image_folder, tmp_path / "runs"))
    tiny_cli = [sys.executable, str(pathlib.Path(__file__).with_name("tiny_backbone.py"))]
    env = {key: value for key, value in __import__("os").environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(tiny_cli + ["check", str(recipe)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train:      18 images" in result.stdout
    assert result.stderr == ""  # no oneDNN, CUDA stub, cuInit or absl lines


def test_fit_cli_matches_the_python_api(image_folder, tmp_path):
    raw = tiny_recipe(image_folder, tmp_path / "cli-runs")
    result = invoke("fit", write_recipe(tmp_path / "r.yaml", raw), "--set", "train.fine_tune.epochs=1")
    assert result.exit_code == 0, result.output
    # The last lines: the best epoch's score named as such, the last epoch's beside it, the report.
    assert "at the best epoch" in result.output and "the last epoch scored" in result.output
    assert "optimistic" in result.output and "/report/report.md" in result.output
    cli_metrics = json.loads(next((tmp_path / "cli-runs").glob("*/metrics.json")).read_text())

    from retail_vision import Recipe, fit

    raw["train"]["fine_tune"]["epochs"] = 1
    raw["output"]["runs_dir"] = str(tmp_path / "api-runs")
    api_metrics = fit(Recipe.from_dict(raw), verbose=0).metrics
    assert cli_metrics["phases"]["fine_tune"]["epochs"] == 1
    assert api_metrics["val_top1"] == pytest.approx(cli_metrics["val_top1"])
    assert api_metrics["phases"]["head"]["val_top1"] == pytest.approx(cli_metrics["phases"]["head"]["val_top1"])


def _all_broken(root):
    write_class_folders(root, per_class=3)
    for path in (root / "Fruit" / "green-pear").iterdir():
        path.write_bytes(b"corrupt")


BAD_INPUTS = {
    "malformed YAML": (lambda tmp: "data: [", "malformed YAML"),
    "unknown key": (lambda tmp: {"data": {"source": str(tmp)}, "trian": {}}, "trian: unknown key; did you mean 'train'?"),
    "unknown backbone": (lambda tmp: {"data": {"source": str(write_class_folders(tmp / "d"))}, "model": {"backbone": "resnet9000"}},
                         "model.backbone: unknown backbone 'resnet9000'"),
    "missing folder": (lambda tmp: {"data": {"source": str(tmp / "nope")}}, "no such folder or manifest"),
    "empty class folder": (lambda tmp: {"data": {"source": str(_with_empty_class(tmp / "d"))}}, "empty class folder"),
    "one class": (lambda tmp: {"data": {"source": str(_one_class(tmp / "d"))}}, "at least 2 class folders"),
    "corrupt images": (lambda tmp: {"data": {"source": str(_all_broken(tmp / "d") or tmp / "d")}}, "has no usable training images"),
    "bad unfreeze layer": (lambda tmp: {"data": {"source": str(write_class_folders(tmp / "d"))},
                                        "train": {"fine_tune": {"unfreeze": "conv3"}}}, "no layer named 'conv3'"),
}


def _with_empty_class(root):
    write_class_folders(root)
    (root / "Fruit" / "kiwi").mkdir()
    return root


def _one_class(root):
    (root / "only").mkdir(parents=True)
    synthetic_image((5, 5, 5)).save(root / "only" / "a.jpg")
    return root


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    make, message = BAD_INPUTS[case]
    content = make(tmp_path)
    path = tmp_path / "recipe.yaml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        base = tiny_recipe("", tmp_path / "runs")
        for section, values in content.items():
            base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
        write_recipe(path, base)
    result = invoke("fit", path)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "runs").exists()


def test_unexpected_failures_exit_1(tmp_path, monkeypatch):
    import retail_vision.training

    monkeypatch.setattr(retail_vision.training, "fit", lambda *a, **k: 1 / 0)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(write_class_folders(tmp_path / "d"), tmp_path / "runs"))
    assert invoke("fit", path).exit_code == 1
