"""The accuracy search's second opinion: k folds of contiguous photo blocks within each class."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.accuracy_search import fold_blocks, write_fold  # noqa: E402


def test_folds_are_contiguous_blocks_of_each_class_and_validate_each_photo_once(tmp_path):
    counts = {"Fruit/Apple/Granny-Smith": 7, "Packages/Milk/Arla-Milk": 5, "Vegetables/Leek": 3}
    for folder, count in counts.items():
        (tmp_path / "train" / folder).mkdir(parents=True)
        for number in range(count, 0, -1):  # written out of order: the blocks follow the names
            (tmp_path / "train" / folder / f"{os.path.basename(folder)}_{number:03d}.jpg").write_bytes(b"jpeg")
    blocks = fold_blocks(str(tmp_path / "train"), 3)
    assert sorted(blocks) == ["Arla-Milk", "Granny-Smith", "Leek"]
    apples = [[os.path.basename(p) for p in block] for block in blocks["Granny-Smith"]]
    assert apples == [["Granny-Smith_001.jpg", "Granny-Smith_002.jpg"],
                      ["Granny-Smith_003.jpg", "Granny-Smith_004.jpg", "Granny-Smith_005.jpg"],
                      ["Granny-Smith_006.jpg", "Granny-Smith_007.jpg"]]

    validated = []
    for fold in range(3):
        train, val = write_fold(str(tmp_path / "work"), blocks, fold)
        train_files = {f for _, _, files in os.walk(train) for f in files}
        val_files = {f for _, _, files in os.walk(val) for f in files}
        assert not train_files & val_files and len(train_files | val_files) == sum(counts.values())
        assert {os.path.basename(p) for p in blocks["Leek"][fold]} == set(os.listdir(os.path.join(val, "Leek")))
        validated += sorted(val_files)
    assert len(validated) == len(set(validated)) == sum(counts.values())  # every photo validated exactly once
