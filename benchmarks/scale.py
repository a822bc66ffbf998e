"""How `fit`'s cost grows with the photos: seconds per image per stage, cache bytes and peak memory at N images.

    python benchmarks/scale.py [--images 2000,20000,200000] [--classes 500] [--storage disk] [--json]
    python benchmarks/scale.py --images 20000 --workers 2    # the multi_worker path, local workers

For each N it generates a folder of N synthetic product photos in K classes (small JPEGs whose
colour, stripes and angle depend on the class, written once under --work, never in the repo),
then runs the real `retail-vision fit` in a fresh process on it: scan, activation cache,
head, fine-tune of the top on the cached activations, then the class means, calibration,
rejection and report. The recipe is the same at every N: EfficientNet-Lite0 (offline weights)
at --image-size px, fine-tune from block6a, 1 head and 1 fine-tune epoch, 1 view per photo,
10% validation, the cache where --storage says (disk by default: where a catalogue of this size
lands on a machine whose memory it does not fit). Per stage it reports seconds per image:
- scan: listing and checking every photo, from the fit's first line to its plan;
- cache: the frozen layers on every training and validation photo (metrics.json);
- head, fine_tune: the phases' wall time (metrics.json) per training image and epoch;
- rest: everything else in the process (start-up, building the model, the class means, the
  calibration, the rejection threshold and the report), per photo.
Peak RSS is the fit process's own (os.wait4), in GB; with --workers, the largest worker's.
--workers N runs N local `fit` processes as one multi_worker cluster (TF_CONFIG, worker 0 the
chief; the times are the chief's): the global batch is the same, split over the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402

PHOTO_PIXELS = 80  # generated photos are this square; the recipe crops and resizes them


def photo(class_index: int, number: int):
    """A synthetic product photo: the class sets the colours, stripe count and angle; noise and shift vary per photo."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(class_index * 100_003 + number)
    palette = np.random.default_rng(class_index)
    base, stripe = palette.integers(30, 226, 3), palette.integers(30, 226, 3)
    stripes, angle = 2 + class_index % 7, np.pi * (class_index // 7 % 12) / 12
    y, x = np.mgrid[0:PHOTO_PIXELS, 0:PHOTO_PIXELS] / PHOTO_PIXELS
    wave = np.sin(2 * np.pi * stripes * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi)) > 0
    pixels = np.where(wave[..., None], stripe, base) + rng.normal(0, 20, (PHOTO_PIXELS, PHOTO_PIXELS, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_class(args) -> int:
    folder, class_index, count = args
    os.makedirs(folder, exist_ok=True)
    for number in range(count):
        photo(class_index, number).save(os.path.join(folder, f"{number:05d}.jpg"), quality=85)
    return count


def photo_folder(root: str, images: int, classes: int) -> str:
    """root/<images>x<classes>/c0000/00000.jpg ...: generated once, kept for the next run (a marker says it is whole)."""
    folder = os.path.join(root, f"{images}x{classes}")
    done = os.path.join(folder, "COMPLETE")
    if os.path.exists(done):
        return folder
    per_class = [images // classes + (1 if i < images % classes else 0) for i in range(classes)]
    started = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        jobs = [(os.path.join(folder, "photos", f"c{i:04d}"), i, n) for i, n in enumerate(per_class)]
        written = sum(pool.map(_write_class, jobs, chunksize=8))
    with open(done, "w") as handle:
        handle.write(f"{written}\n")
    print(f"generated {written:,} photos in {classes:,} classes in {time.perf_counter() - started:.0f} s: {folder}",
          file=sys.stderr, flush=True)
    return folder


def recipe(folder: str, image_size: int, storage: str, workers: int) -> dict:
    return {
        "name": "scale",
        "data": {"source": os.path.join(folder, "photos"), "validation": 0.1, "image_size": image_size},
        "model": {"backbone": "efficientnet_lite0", "weights": "imagenet"},
        "augment": {"enabled": True, "flip": "horizontal", "rotation": 0.0, "zoom": 0.0, "translation": 0.0,
                    "contrast": 0.0, "brightness": 0.0},
        "train": {"batch_size": 64, "cache_storage": storage,
                  "head": {"epochs": 1, "learning_rate": 0.003, "augmented_views": 1},
                  "fine_tune": {"epochs": 1, "learning_rate": 0.001, "warmup_epochs": 0.2,
                                "unfreeze": "block6a_expand_conv"}},
        "output": {"runs_dir": os.path.join(folder, "runs")},
        "distribute": {"strategy": "multi_worker" if workers > 1 else "none"},
    }


def run_fit(folder: str, image_size: int, storage: str, workers: int) -> dict:
    """One `retail-vision fit` in fresh processes (one per worker): the chief's stage times, cache and peak RSS."""
    import yaml

    path = os.path.join(folder, "scale.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(recipe(folder, image_size, storage, workers), handle)
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "retail_vision.cli", "fit", path], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE if index == 0 else subprocess.DEVNULL,
                                  text=True)
                 for index, env in enumerate(_worker_environments(workers))]
    chief, said = processes[0], {}
    for line in chief.stderr:  # streamed: the marker times are when each line was said
        sys.stderr.write(line)
        for marker in ("scanning data:", "backbone:"):
            if marker in line and marker not in said:
                said[marker] = time.perf_counter() - started
    run_dir = chief.stdout.read().strip().splitlines()[-1]
    wall = time.perf_counter() - started
    peak = 0.0
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            raise SystemExit(f"fit failed (status {status}) on {folder}")
        peak = max(peak, usage.ru_maxrss * 1024 / 1e9)  # ru_maxrss is in kB on Linux
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    return {"wall_s": wall, "scan_s": said["backbone:"] - said["scanning data:"], "metrics": metrics,
            "peak_rss_gb": peak}


def _worker_environments(workers: int) -> list[dict]:
    """The environment of each local process: TF_CONFIG naming free local ports when there are several."""
    if workers == 1:
        return [dict(os.environ)]
    sockets = [socket.socket() for _ in range(workers)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]}
    for sock in sockets:
        sock.close()
    return [{**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
            for index in range(workers)]


def stage_costs(images: int, fitted: dict) -> dict:
    metrics = fitted["metrics"]
    cache, phases = metrics["activation_cache"], metrics["phases"]
    train, val = metrics["train_images"], metrics["val_images"]
    staged = {"scan": fitted["scan_s"], "cache": cache["seconds"],
              "head": phases["head"]["wall_s"], "fine_tune": phases["fine_tune"]["wall_s"]}
    rest = fitted["wall_s"] - sum(staged.values())
    return {
        "images": images, "classes": metrics["classes"], "workers": metrics["distribute"]["replicas"],
        "train": train, "val": val,
        "scan_ms": 1e3 * staged["scan"] / images,
        "cache_ms": 1e3 * staged["cache"] / (cache["views"] * train + val),
        "head_ms": 1e3 * staged["head"] / (train * phases["head"]["epochs"]),
        "fine_tune_ms": 1e3 * staged["fine_tune"] / (train * phases["fine_tune"]["epochs"]),
        "rest_ms": 1e3 * rest / images,
        "wall_s": fitted["wall_s"],
        "cache_gb": cache["gigabytes"], "storage": cache["storage"],
        "peak_rss_gb": fitted["peak_rss_gb"],
        "val_top1": metrics["val_top1"],
        "fallbacks": metrics["plan_notes"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="2000,20000,200000", help="comma-separated photo counts")
    parser.add_argument("--classes", type=int, default=500,
                        help="classes at every count (at most a quarter of the photos: 4 photos per class or more)")
    parser.add_argument("--image-size", type=int, default=64, help="recipe image size (px)")
    parser.add_argument("--storage", default="disk", choices=["auto", "memory", "disk"], help="train.cache_storage")
    parser.add_argument("--workers", type=int, default=1, help="local multi_worker processes")
    parser.add_argument("--work", default="/tmp/retail-vision-scale", help="generated photos and runs (not the repo)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()

    rows = []
    for images in (int(n) for n in args.images.split(",")):
        folder = photo_folder(args.work, images, min(args.classes, images // 4))
        rows.append(stage_costs(images, run_fit(folder, args.image_size, args.storage, args.workers)))
        print(table(rows, [c for c in rows[0] if c != "fallbacks"]), file=sys.stderr, flush=True)
    result = {"command": " ".join(sys.argv), "rows": rows}
    name = "scale" + (f"_{args.classes}_classes" if args.classes != 500 else "") + (
        f"_{args.workers}_workers" if args.workers > 1 else "")
    path = write_results(name, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(table(rows, [c for c in rows[0] if c != "fallbacks"]))
        print("wrote", path)


if __name__ == "__main__":
    main()
