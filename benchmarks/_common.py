"""Shared helpers of the benchmark scripts (not a test; prints figures)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


def xc_pr20() -> Path:
    """The xc-pr20 folder: $BIRDNET_TF_XC_PR20 or ../shared/data/xc-pr20 beside the repo."""
    p = Path(os.environ.get("BIRDNET_TF_XC_PR20") or REPO.parent / "shared" / "data" / "xc-pr20")
    if not (p / "metadata.csv").is_file():
        raise SystemExit(f"xc-pr20 not found at {p}; set BIRDNET_TF_XC_PR20")
    return p


def machine() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{len(gpus)} GPU(s), TensorFlow {tf.__version__}")
