"""Shared helpers for the benchmark scripts: the machine they ran on, and writing results."""

from __future__ import annotations

import json
import os
import platform
import time


def machine() -> dict:
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(name: str, results: dict, out_dir: str = "benchmarks/results") -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(f"{path}.partial", "w") as handle:  # a killed benchmark leaves the earlier results whole
        json.dump({"machine": machine(), **results}, handle, indent=2)
    os.replace(f"{path}.partial", path)
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)
