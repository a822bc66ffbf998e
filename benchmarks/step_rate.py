"""Train-step images/s of each phase on synthetic in-memory batches: the ceiling for `fit`.

    python benchmarks/step_rate.py [--backbone efficientnet_lite0] [--batch-size 32] [--steps 30]
        [--jit] [--mixed-precision mixed_float16|mixed_bfloat16] [--image-size 288]
        [--unfreeze-from block6a_expand_conv]

Rows: inference, head step (backbone frozen), head step on cached features, fine-tune step
(all layers, BatchNorm frozen), and fine-tune of the top on cached activations
(`--unfreeze-from`, a block boundary of the backbone). Use it to compare settings (XLA, mixed precision, threads)
in one run on one machine; benchmarks/gpu_check.sh runs it on a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402


def rate(run, batch_size: int, steps: int) -> float:
    run()  # trace and warm up
    run()
    started = time.perf_counter()
    for _ in range(steps):
        run()
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--classes", type=int, default=81)
    parser.add_argument("--jit", action="store_true", help="XLA-compile the train steps")
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's own")
    parser.add_argument("--unfreeze-from", default=None,
                        help="also time a fine-tune of the top from this layer (e.g. block6a_expand_conv) on cached "
                             "activations")
    parser.add_argument("--mixed-precision", default=None)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from retail_vision import backbones
    from retail_vision.classifier import build_classifier, get_backbone
    from retail_vision.backbone_layers import fine_tune_cut
    from retail_vision.training.feature_cache import bottom_model, head_model, top_model
    from retail_vision.backbone_layers import first_trainable_index
    from retail_vision.training.freezing import BackboneFreezer

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    spec = backbones.get(args.backbone)
    size = args.image_size or spec.input_size
    classifier = build_classifier(args.backbone, args.classes, "none", image_size=size)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (args.batch_size, size, size, 3)), tf.float32)
    labels = tf.one_hot(np.arange(args.batch_size) % args.classes, args.classes)
    freezer = BackboneFreezer(get_backbone(classifier))

    def train_step(model, x):
        model.compile(optimizer="adamw", loss="categorical_crossentropy", jit_compile=args.jit)
        return lambda: model.train_on_batch(x, labels)

    rows = []
    predict = tf.function(lambda x: classifier(x, training=False), jit_compile=args.jit)
    rows.append({"step": "inference", "images_per_s": rate(lambda: predict(images).numpy(), args.batch_size, args.steps)})
    freezer.freeze()
    rows.append({"step": "head (frozen backbone)",
                 "images_per_s": rate(train_step(classifier, images), args.batch_size, args.steps)})
    features = tf.constant(np.random.default_rng(1).normal(size=(args.batch_size, spec.feature_dim)), tf.float32)
    rows.append({"step": "head (cached features)",
                 "images_per_s": rate(train_step(head_model(classifier), features), args.batch_size, args.steps)})
    if args.unfreeze_from:  # the top from that layer on, trained on cached activations of the bottom
        backbone = get_backbone(classifier)
        first = first_trainable_index(backbone, args.unfreeze_from)
        cut = fine_tune_cut(backbone, first)
        freezer.unfreeze(first, "frozen")
        activations = bottom_model(classifier, cut)(images, training=False)
        rows.append({"step": f"fine-tune (from {args.unfreeze_from}, cached activations)",
                     "images_per_s": rate(train_step(top_model(classifier, cut), activations), args.batch_size,
                                          args.steps)})
    freezer.unfreeze(0, "frozen")  # all layers
    rows.append({"step": "fine-tune (all, BN frozen)",
                 "images_per_s": rate(train_step(classifier, images), args.batch_size, max(args.steps // 3, 3))})
    print(table(rows, ["step", "images_per_s"]))
    name = f"step_rate_{args.backbone}{'_jit' if args.jit else ''}{'_' + args.mixed_precision if args.mixed_precision else ''}"
    print("wrote", write_results(name, {"command": " ".join(sys.argv), "backbone": args.backbone,
                                        "batch_size": args.batch_size, "jit": args.jit,
                                        "mixed_precision": args.mixed_precision, "rows": rows}))


if __name__ == "__main__":
    main()
