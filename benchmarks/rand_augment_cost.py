"""What RandAugment costs per batch: Keras's layer against the one that runs only its drawn operations.

    python benchmarks/rand_augment_cost.py [--size 320] [--batch 32] [--repeats 5]

Both are traced once, then timed on the same random batch; results in
benchmarks/results/rand_augment_cost.json. Set beside it the activation cache's own rate (the
`cached ... images (N/s)` lines of `fit`), which runs the augmentation once per view and photo.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402


def seconds_per_batch(layer, images, repeats: int) -> float:
    import tensorflow as tf

    augment = tf.function(lambda batch: layer(batch, training=True), autograph=False)
    augment(images)  # traced, not timed
    started = time.perf_counter()
    for _ in range(repeats):
        augment(images).numpy()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320, help="image side in pixels (the grocery recipe's)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each layer")
    args = parser.parse_args()
    import keras
    import numpy as np

    from retail_vision.training.augment import DrawnOpsRandAugment

    images = np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    rows = [{"layer": kind.__name__, "s_per_batch": seconds_per_batch(kind(value_range=(0, 255), factor=0.3, seed=1),
                                                                      images, args.repeats)}
            for kind in (keras.layers.RandAugment, DrawnOpsRandAugment)]
    write_results("rand_augment_cost", {"command": " ".join(sys.argv), "size": args.size, "batch": args.batch,
                                        "rows": rows})
    print(table(rows, ["layer", "s_per_batch"]))


if __name__ == "__main__":
    main()
