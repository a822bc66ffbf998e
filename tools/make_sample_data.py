"""Rebuild retail_vision/sample_data/grocery10 from the Grocery Store dataset (MIT license).

    python tools/make_sample_data.py ../shared/datasets/grocery_store

10 classes x 15 photos, the first 15 of each class's train folder, downsized so the short
side is 224 px (JPEG quality 85): about 2 MB, small enough to ship inside the package.
"""

import os
import shutil
import sys

from PIL import Image

CLASSES = [
    "Fruit/Apple/Granny-Smith", "Fruit/Banana", "Fruit/Kiwi", "Fruit/Lemon", "Vegetables/Carrots",
    "Vegetables/Cucumber", "Vegetables/Pepper/Red-Bell-Pepper", "Packages/Oat-Milk/Oatly-Oat-Milk",
    "Packages/Milk/Arla-Standard-Milk", "Packages/Juice/Tropicana-Apple-Juice",
]
PER_CLASS = 15
SHORT_SIDE = 224


def main(grocery_root: str, out: str = "retail_vision/sample_data/grocery10") -> None:
    shutil.rmtree(out, ignore_errors=True)
    for relative in CLASSES:
        source = os.path.join(grocery_root, "train", relative)
        target = os.path.join(out, relative)
        os.makedirs(target)
        for name in sorted(os.listdir(source))[:PER_CLASS]:
            with Image.open(os.path.join(source, name)) as image:
                image = image.convert("RGB")
                scale = SHORT_SIDE / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
                image.save(os.path.join(target, name), quality=85)
    shutil.copy(os.path.join(grocery_root, "LICENSE"), os.path.join(out, "LICENSE"))


if __name__ == "__main__":
    main(sys.argv[1])
