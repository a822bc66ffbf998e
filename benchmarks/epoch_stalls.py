"""Per-epoch wall time and first-step time of `fit`, with tf.data autotuning on (TF's default) and off (ours).

    python benchmarks/epoch_stalls.py [--data ../shared/datasets/grocery_store/train] [--images 550] [--epochs 5]

The head phase of EfficientNet-Lite0 (frozen backbone, augmentation in the step, 224 px) on a
stratified subset of real photos through `pipeline.batched`, once per setting in one process.
A step callback times each step end, so a slow *first* step of an epoch (the previous epoch's
iterator being torn down) shows apart from the steady step rate.
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
    parser.add_argument("--images", type=int, default=550)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from retail_vision.training.augment import build_augmenter
    from retail_vision.classifier import build_classifier, get_backbone
    from retail_vision.data import pipeline, sources
    from retail_vision.training.freezing import BackboneFreezer
    from retail_vision.recipe import AugmentConfig

    examples = sources.load_examples(args.data)
    _, examples = sources.stratified_split(examples, min(args.images / len(examples), 0.99), 42)
    classes = len(examples.class_names)
    classifier = build_classifier("efficientnet_lite0", classes, "imagenet", image_size=args.size)
    BackboneFreezer(get_backbone(classifier)).freeze()
    images = keras.Input((args.size, args.size, 3))
    model = keras.Model(images, classifier(build_augmenter(AugmentConfig(), 0)(images)))
    model.compile(keras.optimizers.AdamW(1e-3), "categorical_crossentropy")

    class StepEnds(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.begin, self.ends = time.perf_counter(), []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            steps = np.diff([self.begin] + self.ends)
            rows.append({"autotune": setting, "epoch": epoch + 1, "epoch_s": self.ends[-1] - self.begin,
                         "first_step_s": steps[0], "median_step_s": float(np.median(steps[1:-1]))})
            print(table(rows[-1:], list(rows[-1])), flush=True)

    rows = []
    for setting in ("on", "off"):
        dataset = pipeline.batched(pipeline.files_dataset(examples, args.size, "crop"), classes, 32, True, 42, True,
                                   len(examples))
        options = tf.data.Options()
        options.autotune.enabled = setting == "on"  # batched() turns it off; "on" restores TF's default
        model.fit(dataset.with_options(options), epochs=args.epochs, verbose=0, callbacks=[StepEnds()])
    print(table(rows, list(rows[0])))
    print("wrote", write_results("epoch_stalls", {"command": " ".join(sys.argv), "images": len(examples), "rows": rows}))


if __name__ == "__main__":
    main()
