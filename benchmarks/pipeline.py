"""Images/s of the tf.data input pipeline alone (decode + resize, no augmentation, no model).

    python benchmarks/pipeline.py [--data ../shared/datasets/grocery_store/train] [--size 224] [--epochs 3]

Epoch 1 decodes and resizes every JPEG; later epochs read the uint8 cache. The model's step
rate (benchmarks/fit_throughput.py) is what these numbers must stay above.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/datasets/grocery_store/train")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    from retail_vision.data import pipeline, sources

    examples = sources.load_examples(args.data)
    dataset = pipeline.batched(pipeline.files_dataset(examples, args.size, "crop"), len(examples.class_names),
                               args.batch_size, shuffle=True, seed=0, cache=True, sample_count=len(examples))
    rows = []
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        count = sum(int(images.shape[0]) for images, _ in dataset)
        seconds = time.perf_counter() - started
        rows.append({"epoch": epoch, "images": count, "seconds": seconds, "images_per_s": count / seconds,
                     "source": "decode+resize" if epoch == 1 else "uint8 cache"})
    print(table(rows, ["epoch", "source", "images", "seconds", "images_per_s"]))
    print("wrote", write_results("pipeline", {"command": " ".join(sys.argv), "size": args.size, "epochs": rows}))


if __name__ == "__main__":
    main()
