"""`data.source: tfds:<name>` through a local builder prepared into a data_dir (no network)."""

import numpy as np
import pytest

from retail_vision import Recipe, fit
from retail_vision.errors import DataError

from conftest import CLASS_COLOURS, synthetic_image, tiny_recipe

tfds = pytest.importorskip("tensorflow_datasets")


class TinyShelf(tfds.core.GeneratorBasedBuilder):
    """Three colour classes; a 'validation' split; grayscale-free RGB images."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3)),
                 "label": tfds.features.ClassLabel(names=list(CLASS_COLOURS))}
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(8, 0), "validation": self._generate_examples(2, 1000)}

    def _generate_examples(self, per_class, offset):
        for label, colour in enumerate(CLASS_COLOURS.values()):
            for i in range(per_class):
                image = np.asarray(synthetic_image(colour, seed=offset + 100 * label + i))
                yield f"{label}-{i}", {"image": image, "label": label}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    TinyShelf(data_dir=str(path)).download_and_prepare()
    return path


@pytest.mark.parametrize("validation, val_count", [("validation", 6), (0.25, 6)])
def test_tfds_source_trains_with_a_split_or_a_fraction(data_dir, tmp_path, validation, val_count):
    raw = tiny_recipe("", tmp_path / "runs")
    raw["data"].update(source="tfds:tiny_shelf", data_dir=str(data_dir), validation=validation)
    raw["train"]["fine_tune"]["epochs"] = 1
    result = fit(Recipe.from_dict(raw), verbose=0)
    assert result.metrics["classes"] == 3
    assert result.metrics["val_images"] == val_count
    assert result.metrics["train_images"] == 24 if validation == "validation" else 18


def test_unknown_tfds_split_is_a_data_error(data_dir):
    from retail_vision.data.training_data import resolve_training_data

    raw = tiny_recipe("", "runs")
    raw["data"].update(source="tfds:tiny_shelf", data_dir=str(data_dir), validation="tset")
    with pytest.raises(DataError, match="tfds split 'tset': not in tiny_shelf"):
        resolve_training_data(Recipe.from_dict(raw).data, seed=0)
