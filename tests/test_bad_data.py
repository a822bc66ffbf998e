"""The bad-data corpus: every kind of broken or unusual file is used, fixed, or skipped with a reason.

Each case writes one file into a class folder; the scan decides, and a real fit over the whole
corpus never crashes.
"""

import io
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from retail_vision import Recipe, fit
from retail_vision.data import sources
from retail_vision.data.scan import scan
from retail_vision.errors import DataError

from conftest import synthetic_image, tiny_recipe, write_class_folders

RED = (200, 40, 40)


def _jpeg_bytes(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def truncated(folder):
    (folder / "truncated.jpg").write_bytes(_jpeg_bytes(synthetic_image(RED, size=(64, 64)))[:400])


def zero_bytes(folder):
    (folder / "zero.jpg").write_bytes(b"")


def text_named_jpg(folder):
    (folder / "notes.jpg").write_text("this is not a photo")


def png_with_alpha(folder):
    synthetic_image(RED, mode="RGBA").save(folder / "alpha.png")


def grayscale(folder):
    synthetic_image(RED, mode="L").save(folder / "gray.png")


def png_16_bit(folder):
    Image.fromarray((np.arange(40 * 32).reshape(32, 40) * 50).astype(np.uint16)).save(folder / "deep.png")


def cmyk_jpeg(folder):
    synthetic_image(RED).convert("CMYK").save(folder / "cmyk.jpg")


def exif_rotated(folder):
    image = synthetic_image(RED, size=(40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    image.save(folder / "rotated.jpg", exif=exif)


def animated_gif(folder):
    frames = [synthetic_image(RED, mode="P"), synthetic_image((0, 0, 0), mode="P")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])


def huge(folder):
    Image.new("RGB", (12000, 12000), RED).save(folder / "huge.jpg", quality=50)


def one_pixel(folder):
    Image.new("RGB", (1, 1), RED).save(folder / "pixel.png")


def unicode_name(folder):
    synthetic_image(RED).save(folder / "jaffa-äpple-ヨーグルト.jpg")


def non_utf8_name(folder):
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not valid UTF-8
    synthetic_image(RED).save(os.path.join(folder, name), "JPEG")


def symlink_loop(folder):
    os.symlink(folder / "loop-b.jpg", folder / "loop-a.jpg")
    os.symlink(folder / "loop-a.jpg", folder / "loop-b.jpg")


def unreadable(folder):
    synthetic_image(RED).save(folder / "locked.jpg")
    os.chmod(folder / "locked.jpg", 0)


ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# file made -> (file names, expected: "used" or the skip reason)
CASES = {
    truncated: (["truncated.jpg"], "unreadable image"),
    zero_bytes: (["zero.jpg"], "zero-byte file"),
    text_named_jpg: (["notes.jpg"], "not an image"),
    png_with_alpha: (["alpha.png"], "used"),
    grayscale: (["gray.png"], "used"),
    png_16_bit: (["deep.png"], "used"),
    cmyk_jpeg: (["cmyk.jpg"], "used"),
    exif_rotated: (["rotated.jpg"], "used"),
    animated_gif: (["animated.gif"], "used"),
    huge: (["huge.jpg"], "used"),
    one_pixel: (["pixel.png"], "used"),
    unicode_name: (["jaffa-äpple-ヨーグルト.jpg"], "used"),
    non_utf8_name: ([os.fsdecode(b"caf\xe9.jpg")], "used"),
    symlink_loop: (["loop-a.jpg", "loop-b.jpg"], "symlink loop"),
    unreadable: (["locked.jpg"], "used" if ROOT else "permission denied"),  # root reads any file
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = write_class_folders(tmp_path_factory.mktemp("corpus") / "photos", per_class=6)
    folder = root / "Fruit" / "Apple" / "red-apple"
    for make in CASES:
        make(folder)
    return root, folder


@pytest.mark.parametrize("make", list(CASES), ids=lambda make: make.__name__)
def test_each_file_is_used_or_skipped_with_its_reason(corpus, make):
    root, folder = corpus
    names, expected = CASES[make]
    usable, skipped = scan(sources.load_examples(str(root)))
    reasons = {os.path.basename(s.path): s.reason for s in skipped}
    for name in names:
        if expected == "used":
            assert str(folder / name) in usable.paths, reasons.get(name)
        else:
            assert expected in reasons[name]


def test_exif_orientation_is_honoured(corpus):
    import tensorflow as tf

    from retail_vision.data.pipeline import files_dataset

    _, folder = corpus
    usable, _ = scan(sources.Examples([str(folder / "rotated.jpg")], [0], ["red-apple"]))
    assert usable.orientations == [6]
    image, _ = next(iter(files_dataset(usable, 16, "pad")))
    upright = np.asarray(Image.open(folder / "rotated.jpg").transpose(Image.ROTATE_270))  # 20 wide, 40 high
    assert upright.shape[:2] == (40, 20)
    # Padded to a square, the upright (tall) image leaves bands left and right, none above and below.
    assert float(tf.reduce_max(image[:, 0])) == 0.0 and float(tf.reduce_min(image[8, 4:12, 0])) > 100


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation):
    from PIL import ImageOps

    from retail_vision.data.pipeline import apply_exif_orientation

    pixels = np.random.default_rng(orientation).integers(0, 255, (3, 5, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    np.testing.assert_array_equal(apply_exif_orientation(pixels, orientation).numpy(), expected)


def test_fit_over_the_corpus_never_crashes_and_reports_the_skipped(corpus, tmp_path):
    root, _ = corpus
    recipe = tiny_recipe(root, tmp_path / "runs")
    recipe["train"]["head"]["epochs"] = 1
    recipe["train"]["fine_tune"]["epochs"] = 1
    result = fit(Recipe.from_dict(recipe), verbose=0)
    skipped = {os.path.basename(s["path"]) for s in result.metrics["skipped_files"]}
    expected = {name for names, outcome in CASES.values() if outcome != "used" for name in names}
    assert skipped == expected


def test_manifest_rows_missing_files_duplicates_and_labels_with_commas(tmp_path):
    root = write_class_folders(tmp_path / "photos", per_class=3, nested=False)
    manifest = root / "list.csv"
    manifest.write_text(
        'red-apple/red-apple_000.jpg,"Apple, red (loose)"\n'
        'red-apple/red-apple_000.jpg,"Apple, red (loose)"\n'  # duplicate row: counted once
        "blue-carton/blue-carton_000.jpg,Oat milk 1 l\n"
        "blue-carton/missing.jpg,Oat milk 1 l\n"
    )
    examples = sources.load_examples(str(manifest))
    assert examples.class_names == ["Apple, red (loose)", "Oat milk 1 l"]
    assert len(examples) == 3
    usable, skipped = scan(examples)
    assert [(pathlib.Path(s.path).name, s.reason) for s in skipped] == [("missing.jpg", "file not found")]
    manifest.write_text("red-apple/red-apple_000.jpg,apple\nred-apple/red-apple_000.jpg,pear\n")
    with pytest.raises(DataError, match=r"list.csv:2: .* is listed again with another label \('pear'\)"):
        sources.load_examples(str(manifest))
