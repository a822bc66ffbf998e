"""Would enrollment do better on a multi-scale embedding? A measurement on the open-world benchmark's run.

    python benchmarks/multiscale_enrollment.py [--work DIR] [--layer NAME] [--weights 0,0.1,...]
        [--seed N] (results: benchmarks/results/multiscale_enrollment_cosine[-seedN]_<layer>.json)

Runs after `benchmarks/open_world.py --head cosine --stages fit,enroll` (it reads that run and the
enrollment photos it chose under --work). Not yet what `retail-vision enroll` does: here each new
class's prototype, the known classes' means and every photo live in a wider embedding, the run's
unit embedding joined with the pooled activations entering --layer (centred on the training
photos' mean, unit length), weighted sqrt(1 - w) and sqrt(w). The trained classes' logits stay the
run's. For each w the map is chosen as enroll chooses it (its grid, the same 1-point bound on the
known val photos) and w itself by enroll's own estimate, the enrollment photos' left-out recall,
so nothing is chosen on the photos scored: 81-way top-1 of the 20 new classes' photos not used to
enroll them, for 1, 5, 10 photos and the iconic image. w = 0 is enroll as it is.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402
from benchmarks.open_world import SHOTS, default_work, iconic_image, photos, split_classes  # noqa: E402


def scored(predictor, middle, pairs: list[tuple[str, str]]) -> dict:
    """{embedding, logits, middle} of the photos through the run, `middle` the pooled activations entering the layer."""
    import numpy as np
    import tensorflow as tf

    from retail_vision.artifacts import load_images

    images, failures = load_images([p for p, _ in pairs], predictor.image_size, predictor.resize)
    assert not failures, failures[:3]
    outputs = predictor.outputs(images)
    outputs["middle"] = np.concatenate([middle(tf.constant(images[i : i + 32], tf.float32)).numpy()
                                        for i in range(0, len(images), 32)])
    return outputs


def main() -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    from retail_vision.artifacts import load_predictor
    from retail_vision.classifier import LOGITS_LAYER
    from retail_vision.enrollment import MAX_KNOWN_DROP, Scored, choose_logit_map, nearest_mean

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="as open_world.py's (default: /tmp/retail-vision-open-world[-seedN])")
    parser.add_argument("--layer", default="block6a_expand_conv", help="the backbone layer whose input is pooled")
    parser.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5", help="the candidates for w")
    parser.add_argument("--seed", type=int, default=0, help="the class split, as open_world.py's --seed")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    args.work = args.work or default_work(args.seed)
    tag = "cosine" + (f"-seed{args.seed}" if args.seed else "")
    runs = sorted(glob.glob(os.path.join(args.work, f"runs-known-{tag}", "grocery_known-*")))
    if not runs:
        sys.exit(f"{args.work}: no known-class run; run benchmarks/open_world.py --head cosine --seed {args.seed} "
                 "--stages fit,enroll")

    known, new, folders = split_classes(args.seed)
    predictor = load_predictor(runs[-1])
    model = predictor.model
    backbone = model.get_layer("backbone")
    entering = keras.Model(backbone.input, backbone.get_layer(args.layer).input)
    preprocess = model.get_layer("preprocess")
    middle = tf.function(lambda x: tf.reduce_mean(entering(preprocess(x), training=False), axis=[1, 2]),
                         autograph=False)
    train = [(p, n) for n in known for p in photos("train", n, folders)]
    val = [(p, n) for n in known for p in photos("val", n, folders)]
    new_photos = [(p, n) for n in new for split in ("train", "val") for p in photos(split, n, folders)]
    iconic = [(iconic_image(n), n) for n in new]
    parts = {name: scored(predictor, middle, pairs) for name, pairs in
             (("train", train), ("val", val), ("new", new_photos), ("iconic", iconic))}
    known_index = {name: i for i, name in enumerate(predictor.labels)}
    new_index = {name: i for i, name in enumerate(new)}
    train_truth = np.array([known_index[n] for _, n in train])
    val_truth = np.array([known_index[n] for _, n in val])
    new_truth = np.array([new_index[n] for _, n in new_photos])
    centre = parts["train"]["middle"].mean(axis=0)
    trained_scale = float(np.mean(model.get_layer(LOGITS_LAYER).scale.numpy()))

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def widened(part: str, w: float):
        return unit(np.concatenate([np.sqrt(1 - w) * parts[part]["embedding"],
                                    np.sqrt(w) * unit(parts[part]["middle"] - centre)], axis=1))

    rows = []
    for shots in (*SHOTS, "iconic"):
        if shots == "iconic":
            used = np.zeros(len(new_photos), bool)
        else:
            folder = os.path.join(args.work, f"enroll-{shots}")
            chosen = {os.path.realpath(os.path.join(folder, n, f))
                      for n in new for f in os.listdir(os.path.join(folder, n))}
            used = np.array([os.path.realpath(p) in chosen for p, _ in new_photos])
        measured = []
        for w in weights:
            embedding = {part: widened(part, w) for part in parts}
            means = unit(np.stack([embedding["train"][train_truth == c].mean(axis=0)
                                   for c in range(len(predictor.labels))]))
            if shots == "iconic":
                shot = Scored(embedding["iconic"], parts["iconic"]["logits"], np.arange(len(new)))
            else:
                shot = Scored(embedding["new"][used], parts["new"]["logits"][used], new_truth[used])
            prototypes = unit(np.stack([shot.embeddings[shot.truth == c].mean(axis=0) for c in range(len(new))]))
            known_photos = Scored(embedding["val"], parts["val"]["logits"], val_truth)
            chosen_map = choose_logit_map(known_photos, shot, prototypes, means, trained_scale, MAX_KNOWN_DROP)
            test = embedding["new"][~used]
            new_logits = chosen_map.scale * (test @ prototypes.T - chosen_map.gate * nearest_mean(test, means)[:, None]
                                             ) + chosen_map.bias
            predicted = np.concatenate([parts["new"]["logits"][~used], new_logits], axis=1).argmax(axis=1)
            measured.append({"shots": shots, "w": w, "estimated_recall": chosen_map.choice["recall"],
                             "new_top1": float(np.mean(predicted == new_truth[~used] + len(predictor.labels))),
                             "new_photos": int((~used).sum())})
        best_estimate = max(measured, key=lambda row: (row["estimated_recall"], -row["w"]))
        for row in measured:
            row["picked"] = row is best_estimate
        rows += measured
        print(table(measured, list(measured[0])), flush=True)
    path = write_results(f"multiscale_enrollment_{tag}_{args.layer}",
                         {"run_dir": runs[-1], "layer": args.layer, "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
