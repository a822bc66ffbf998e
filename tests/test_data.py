"""Data sources, the scan and the tf.data pipeline, on synthetic photos written by the tests."""

import pathlib

import numpy as np
import pytest

from retail_vision.data import sources
from retail_vision.data.scan import check_image, scan
from retail_vision.errors import DataError

from conftest import synthetic_image, write_class_folders


def test_class_is_the_leaf_folder_at_any_depth(image_folder):
    examples = sources.load_examples(str(image_folder))
    assert examples.class_names == ["red-apple", "green-pear", "blue-carton"]  # sorted by folder path
    assert len(examples) == 24
    assert set(examples.counts().values()) == {8}
    for path, label in zip(examples.paths, examples.labels):
        assert f"/{examples.class_names[label]}/" in path


def test_repeated_leaf_names_keep_their_parent_path(tmp_path):
    for group in ("Fruit", "Juice"):
        for leaf in ("Apple", f"Only-{group}"):
            folder = tmp_path / group / leaf
            folder.mkdir(parents=True)
            synthetic_image((10, 10, 10)).save(folder / "a.jpg")
    names = sources.load_examples(str(tmp_path)).class_names
    assert names == ["Fruit/Apple", "Only-Fruit", "Juice/Apple", "Only-Juice"]


def test_manifest_with_label_names_relative_paths_and_header(image_folder):
    manifest = image_folder / "list.csv"
    rows = ["path,label"] + [f"Fruit/green-pear/green-pear_00{i}.jpg,pear" for i in range(3)]
    rows += [f"Packages/blue-carton/blue-carton_00{i}.jpg,carton" for i in range(2)]
    manifest.write_text("\n".join(rows) + "\n")
    examples = sources.load_examples(str(manifest))
    assert examples.class_names == ["carton", "pear"]
    assert examples.labels == [1, 1, 1, 0, 0]
    assert examples.paths[0] == str(image_folder / "Fruit/green-pear/green-pear_000.jpg")


def test_manifest_with_label_ids_and_a_class_name_file(image_folder):
    (image_folder / "classes.csv").write_text("Class Name (str),Class ID (int)\npear,0\ncarton,1\n")
    (image_folder / "train.txt").write_text(
        "Fruit/green-pear/green-pear_000.jpg, 0, 9\nPackages/blue-carton/blue-carton_000.jpg, 1, 9\n"
    )
    examples = sources.load_examples(str(image_folder / "train.txt"), str(image_folder / "classes.csv"))
    assert examples.class_names == ["pear", "carton"] and examples.labels == [0, 1]
    with pytest.raises(DataError, match="labels are ids; set data.class_names"):
        sources.load_examples(str(image_folder / "train.txt"))


def test_stratified_split_is_seeded_and_keeps_every_class(image_folder):
    examples = sources.load_examples(str(image_folder))
    train, val = sources.stratified_split(examples, 0.25, seed=1)
    again_train, again_val = sources.stratified_split(examples, 0.25, seed=1)
    other_train, other_val = sources.stratified_split(examples, 0.25, seed=2)
    assert val.paths == again_val.paths and val.paths != other_val.paths
    assert set(val.counts().values()) == {2} and set(train.counts().values()) == {6}
    assert not set(train.paths) & set(val.paths)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root.mkdir(), "no images found"),
        (lambda root: write_class_folders(root, nested=False) and (root / "empty").mkdir(), "empty class folder"),
        (lambda root: _one_class(root), "a classifier needs at least 2 class folders"),
    ],
)
def test_bad_folders_are_data_errors(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataError, match=message):
        sources.load_examples(str(root))


def _one_class(root):
    (root / "only").mkdir(parents=True)
    synthetic_image((1, 2, 3)).save(root / "only" / "a.jpg")


def test_missing_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such folder or manifest"):
        sources.load_examples(str(tmp_path / "nope"))


def test_validation_class_unknown_to_train_is_an_error(image_folder, tmp_path):
    val = tmp_path / "val" / "mango"
    val.mkdir(parents=True)
    synthetic_image((1, 2, 3)).save(val / "a.jpg")
    train = sources.load_examples(str(image_folder))
    with pytest.raises(DataError, match="classes not in the training data: mango"):
        sources.load_examples(str(tmp_path / "val"), known_classes=train.class_names)


def test_scan_skips_broken_files_and_says_why(image_folder):
    folder = image_folder / "Fruit" / "green-pear"
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a photo")
    good = (folder / "green-pear_000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    examples = sources.load_examples(str(image_folder))
    usable, skipped = scan(examples)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert reasons.keys() == {"zero.jpg", "text.jpg", "truncated.jpg"}
    assert reasons["zero.jpg"] == "zero-byte file"
    assert reasons["text.jpg"] == "not an image"
    assert "unreadable" in reasons["truncated.jpg"]
    assert len(usable) == 24


def test_scan_rejects_formats_the_pipeline_cannot_decode(tmp_path):
    synthetic_image((9, 9, 9)).save(tmp_path / "photo.jpg", "TIFF")
    assert "unsupported format TIFF" in check_image(str(tmp_path / "photo.jpg"))


@pytest.mark.parametrize(
    "mode, fmt, name",
    [("L", "PNG", "gray.png"), ("RGBA", "PNG", "alpha.png"), ("RGB", "BMP", "photo.bmp"), ("P", "GIF", "anim.gif"),
     ("RGB", "JPEG", "photo.jpg")],
)
def test_pipeline_decodes_every_format_to_rgb(tmp_path, mode, fmt, name):
    import tensorflow as tf

    from retail_vision.data.pipeline import load_and_resize

    image = synthetic_image((200, 40, 40), size=(60, 30), mode=mode)
    extra = {"save_all": True, "append_images": [synthetic_image((0, 0, 0), size=(60, 30), mode=mode)]} if fmt == "GIF" else {}
    image.save(tmp_path / name, fmt, **extra)
    out = load_and_resize(tf.constant(str(tmp_path / name)), 24, "crop").numpy()
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    if mode != "L":  # the first frame, with its red cast, is what we read
        assert out[..., 0].mean() > out[..., 2].mean() + 50


def test_resize_keeps_aspect_ratio_by_cropping_or_padding():
    import tensorflow as tf

    from retail_vision.data.pipeline import resize_image

    wide = tf.fill([20, 40, 3], tf.constant(255, tf.uint8))
    cropped = resize_image(wide, 10, "crop").numpy()
    padded = resize_image(wide, 10, "pad").numpy()
    assert cropped.shape == padded.shape == (10, 10, 3)
    assert cropped.min() > 250  # the center crop is all image
    assert padded[0].max() == 0 and padded[5].min() > 250  # bands of padding above and below


def test_pipeline_batches_one_hot_labels_with_a_seeded_shuffle(image_folder):
    from retail_vision.data.pipeline import batched, files_dataset

    examples = sources.load_examples(str(image_folder))

    def first_labels(seed):
        ds = batched(files_dataset(examples, 16, "crop"), 3, 24, True, seed, True, len(examples))
        images, labels = next(iter(ds))
        assert images.shape == (24, 16, 16, 3) and labels.shape == (24, 3)
        return np.argmax(labels.numpy(), axis=1).tolist()

    assert first_labels(3) == first_labels(3)
    assert first_labels(3) != first_labels(4)


def test_manifest_paths_outside_its_folder_are_refused_unless_allowed(image_folder, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    synthetic_image((9, 9, 9)).save(outside / "x.jpg")
    manifest = image_folder / "list.csv"
    manifest.write_text("Fruit/green-pear/green-pear_000.jpg,pear\n../elsewhere/x.jpg,carton\n")
    with pytest.raises(DataError, match=r"list.csv:2: '../elsewhere/x.jpg' is outside the manifest's folder"):
        sources.load_examples(str(manifest))
    (image_folder / "abs.csv").write_text("Fruit/green-pear/green-pear_000.jpg,x\n/etc/passwd,pear\n")
    with pytest.raises(DataError, match="outside the manifest's folder"):
        sources.load_examples(str(image_folder / "abs.csv"))
    assert len(sources.load_examples(str(manifest), allow_outside_paths=True)) == 2


def test_images_not_cached_are_shuffled_as_files_before_decoding(image_folder):
    # Without the image cache (no room in memory) a shuffle buffer of decoded images would hold
    # them all: the files are shuffled instead, anew each epoch, and every photo still comes once.
    from retail_vision.data.training_data import TrainingData

    data = TrainingData(["red-apple", "green-pear", "blue-carton"], sources.load_examples(str(image_folder)),
                        sources.load_examples(str(image_folder)), [], train_count=24, validation_count=24)
    train, _ = data.datasets(16, "crop", 24, seed=0, cache=False)
    epochs = [next(iter(train))[0].numpy() for _ in range(2)]
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
    np.testing.assert_array_equal(np.sort(epochs[0].reshape(24, -1), axis=0), np.sort(epochs[1].reshape(24, -1), axis=0))
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef.FromString(tf.raw_ops.DatasetToGraphV2(input_dataset=train._variant_tensor).numpy())
    node = {n.name: n for n in graph.node}
    shuffles = [n for n in graph.node if n.op.startswith("ShuffleDataset")]
    assert len(shuffles) == 1 and node[shuffles[0].input[0]].op == "TensorSliceDataset"  # the file list, not images


def test_epoch_pipelines_run_without_the_autotune_thread(image_folder):
    # With tf.data autotuning on, each epoch's iterator teardown waited up to 35 s for the
    # autotuner's thread (docs/BENCHMARKS.md): every dataset that fit iterates per epoch keeps it off.
    from retail_vision.training import feature_cache
    from retail_vision.data.pipeline import batched, files_dataset

    examples = sources.load_examples(str(image_folder))
    images = batched(files_dataset(examples, 16, "crop"), 3, 8, True, 0, True, len(examples))
    features = (np.zeros((6, 4), "float16"), np.array([0, 1, 2, 0, 1, 2], "int32"))
    cached_train, cached_val = feature_cache._datasets(features, features, 2, 0, views=2, num_classes=3)
    for dataset in (images, cached_train, cached_val):
        assert dataset.options().autotune.enabled is False
    assert next(iter(images))[0].shape == (8, 16, 16, 3)


def test_a_last_batch_smaller_than_the_replicas_is_padded_at_weight_zero():
    # 9 validation photos in global batches of 8 over 2 replicas: replica 1 would get an empty batch,
    # which oneDNN's convolution mishandles on some machines (see pipeline.at_least_one_row_per_replica).
    import tensorflow as tf

    from retail_vision.data.pipeline import at_least_one_row_per_replica

    images = np.arange(9, dtype="float32").reshape(9, 1, 1, 1)
    labels = np.eye(3, dtype="float32")[[0, 1, 2, 0, 1, 2, 0, 1, 2]]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    batches = list(at_least_one_row_per_replica(dataset, 2, {0: 1.0, 1: 2.0, 2: 0.5}))
    assert [len(x) for x, _, _ in batches] == [8, 2]
    last_images, _, last_weights = batches[1]
    assert last_images.numpy().ravel().tolist() == [8.0, 8.0]  # the real row, then a copy of it
    assert last_weights.numpy().tolist() == [0.5, 0.0]  # its class weight, then nothing
    assert batches[0][2].numpy().tolist() == [1.0, 2.0, 0.5, 1.0, 2.0, 0.5, 1.0, 2.0]


def test_linked_class_folders_are_followed_once_each(tmp_path):
    store = write_class_folders(tmp_path / "store", nested=False)
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for name in ("red-apple", "green-pear", "blue-carton"):
        (dataset / name).symlink_to(store / name, target_is_directory=True)
    (dataset / "loop").symlink_to(dataset, target_is_directory=True)  # a link back up the tree
    examples = sources.load_examples(str(dataset))
    assert sorted(examples.class_names) == ["blue-carton", "green-pear", "red-apple"]
    assert len(examples) == 24


def test_webp_and_heic_photos_are_read_and_other_files_are_listed_as_skipped(tmp_path):
    import tensorflow as tf

    from retail_vision.data.pipeline import decode_image, load_and_resize

    root = write_class_folders(tmp_path / "photos", per_class=2, nested=False)
    photo = synthetic_image((200, 40, 40), seed=3)
    photo.save(root / "red-apple" / "phone.webp", "WEBP", lossless=True)
    photo.convert("RGBA").save(root / "red-apple" / "web.webp", "WEBP", lossless=True)
    photo.save(root / "red-apple" / "IMG_0001.heic", quality=95)  # an iPhone photo (pillow-heif writes it)
    (root / "red-apple" / "IMG_0002.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))  # broken
    (root / "green-pear" / "notes.txt").write_text("shot on Monday")
    (root / "green-pear" / ".DS_Store").write_bytes(b"\x00")
    usable, skipped = scan(sources.load_examples(str(root)))
    reasons = {pathlib.Path(s.path).name: s.reason for s in skipped}
    assert set(reasons) == {"IMG_0002.heic", "notes.txt"}
    assert reasons["notes.txt"].startswith("unsupported file type .txt")
    assert {pathlib.Path(p).name for p in usable.paths} >= {"phone.webp", "web.webp", "IMG_0001.heic"}
    for name in ("phone.webp", "web.webp"):
        decoded = decode_image(tf.io.read_file(str(root / "red-apple" / name))).numpy()
        np.testing.assert_array_equal(decoded, np.asarray(photo))  # lossless: the same pixels
    heic = load_and_resize(tf.constant(str(root / "red-apple" / "IMG_0001.heic")), 32, "crop").numpy()
    expected = load_and_resize(tf.constant(str(root / "red-apple" / "phone.webp")), 32, "crop").numpy()
    # Lossy HEIC smooths the synthetic noise away; the photo's colour survives.
    assert np.abs(heic.mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 5


def test_a_long_scan_says_how_far_it_is(tmp_path, monkeypatch, capsys):
    from retail_vision import console
    from retail_vision.data import scan as scanning

    monkeypatch.setattr(console, "PROGRESS_EVERY_S", 0.0)  # every photo counts as long enough
    root = write_class_folders(tmp_path / "photos", per_class=3, nested=False)
    usable, _ = scanning.scan(sources.load_examples(str(root)))
    said = [line for line in capsys.readouterr().err.splitlines() if "scanned" in line]
    assert said and said[0].startswith("[retail-vision] scanned 1 of 9 photos") and "s left)" in said[0]
    assert len(said) == 8 and len(usable) == 9  # none once the last photo is in: the scan is done
