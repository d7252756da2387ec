"""GPU check (issue 14 item 4): run whenever a GPU machine is at hand; one printed table.

Rows:

* training steps/s of the default model at batch 32 on fixed random batches, float32 and
  ``mixed_float16`` (Keras wraps the package's optimizers in a ``LossScaleOptimizer``);
* GPU busy fraction during the float32 training, sampled every 0.2 s with ``nvidia-smi``;
* where the mel frontend (STFT, mel matrix) and the augmentation ops (SpecAugment masks) run: the
  device of each of their ops in a traced training step (``tf.debugging.set_log_device_placement``
  is too noisy to read; the traced graph's op devices say the same);
* whole-recording inference real-time factor: ``WholeRecordingModel`` of an untrained export of
  the default architecture scoring a 10-min synthetic recording in 3-s windows.

On a machine without a GPU it says so, prints the CPU rows (float32 training, placement,
inference) and exits 0.

    python benchmarks/gpu_check.py [--steps 20] [--batch 32] [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import REPO, machine  # noqa: E402


def gpu_busy_sampler(stop: threading.Event, samples: list[float]) -> None:
    """Appends nvidia-smi's utilization.gpu (0..1, first GPU) every 0.2 s until ``stop`` is set."""
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
            if out:
                samples.append(float(out[0]) / 100)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return
        stop.wait(0.2)


def train_speed(policy: str, steps: int, batch: int, sample_busy: bool) -> dict:
    """Steps per second of the default model's training step under ``policy`` (after one warm-up step)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from birdnet_tf.config import Config
    from birdnet_tf.models.build import build_model
    from birdnet_tf.train.optim import make_loss, make_optimizer

    keras.mixed_precision.set_global_policy(policy)
    cfg = Config().replace([f"data.batch_size={batch}", "train.warmup_epochs=0"])
    keras.utils.set_random_seed(0)
    model = build_model(cfg, 20)
    model.compile(optimizer=make_optimizer(cfg, steps), loss=make_loss(cfg))
    x = np.random.default_rng(0).normal(size=(batch, cfg.excerpt_samples)).astype("float32") * 0.1
    y = np.eye(20, dtype="float32")[np.arange(batch) % 20]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=gpu_busy_sampler, args=(stop, samples), daemon=True)
    if sample_busy:
        sampler.start()
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    wall = time.perf_counter() - t0
    stop.set()
    keras.mixed_precision.set_global_policy("float32")
    return {"steps_per_s": steps / wall, "gpu_busy": (sum(samples) / len(samples)) if samples else None,
            "loss_scaled": type(model.optimizer).__name__ == "LossScaleOptimizer"}


def placement(batch: int) -> dict[str, str]:
    """The devices the frontend's and augmentation's ops are placed on in a traced training call."""
    import numpy as np
    import tensorflow as tf

    from birdnet_tf.config import Config
    from birdnet_tf.models.build import build_model

    cfg = Config()
    model = build_model(cfg, 20)
    x = np.zeros((batch, cfg.excerpt_samples), "float32")
    fn = tf.function(lambda t: model(t, training=True))
    graph = fn.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    fn(x)  # runs it once, so placement happened
    found: dict[str, set] = {"frontend (mel)": set(), "augmentation (SpecAugment)": set()}
    for op in graph.get_operations():
        name = op.name.lower()
        key = "frontend (mel)" if "mel" in name else "augmentation (SpecAugment)" if "spec_augment" in name else None
        if key:
            found[key].add(op.device or "default")
    gpus = tf.config.list_logical_devices("GPU")
    default = gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name
    return {k: ", ".join(sorted(d.replace("default", f"{default} (default)") for d in v)) or "no ops found"
            for k, v in found.items()}


def inference_rtf(minutes: float) -> float:
    """Real-time factor of whole-recording inference on ``minutes`` of synthetic audio (untrained export)."""
    import keras
    import numpy as np

    from birdnet_tf.config import Config
    from birdnet_tf.export import export_model
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.models.build import build_model

    cfg = Config()
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        keras.utils.set_random_seed(0)
        export_model(build_model(cfg, 20), cfg, [f"species_{i:02d}" for i in range(20)], tmp / "export",
                     force=True, log=lambda msg: None)
        scorer = WholeRecordingModel.from_export(tmp / "export")
        audio = (np.random.default_rng(0).normal(size=int(minutes * 60 * cfg.audio.sample_rate_hz)) * 0.1
                 ).astype("float32")
        scorer.score(audio[: cfg.audio.sample_rate_hz * 10], window_s=3.0)  # warm-up
        t0 = time.perf_counter()
        scorer.score(audio, window_s=3.0)
        return minutes * 60 / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per row (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=32, help="training batch (default: %(default)s)")
    ap.add_argument("--minutes", type=float, default=10.0, help="synthetic recording length (default: %(default)s)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    has_smi = shutil.which("nvidia-smi") is not None
    print(f"machine: {machine()}; {len(gpus)} GPU(s){'' if gpus else ' — no GPU: CPU rows only'}", flush=True)
    rows = []
    r = train_speed("float32", args.steps, args.batch, sample_busy=bool(gpus) and has_smi)
    busy = "n/a" if r["gpu_busy"] is None else f"{r['gpu_busy']:.0%}"
    rows.append(("training float32", f"{r['steps_per_s']:.2f} steps/s", f"GPU busy {busy}"))
    if gpus:
        m = train_speed("mixed_float16", args.steps, args.batch, sample_busy=False)
        rows.append(("training mixed_float16", f"{m['steps_per_s']:.2f} steps/s",
                     f"loss scaling {'on' if m['loss_scaled'] else 'OFF'}; × {m['steps_per_s'] / r['steps_per_s']:.2f}"))
    for what, where in placement(args.batch).items():
        rows.append((f"placement {what}", where, ""))
    rtf = inference_rtf(args.minutes)
    rows.append(("whole-recording inference", f"{rtf:.0f}× real time", f"{args.minutes:g} min synthetic, 3-s windows"))
    print("\n| check | result | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if not gpus:
        print("\nno GPU on this machine: the mixed-precision row and GPU busy fraction need one")


if __name__ == "__main__":
    main()
