"""Scaling out on one CPU machine (issue 14): Beam DirectRunner with 1 and 2 workers against ``predict``.

Archive inference: the same files, the same export, 3-s windows (``--window-s 3``), scored by

* ``predict``      — ``birdnet-tf predict EXPORT FILES --window-s 3`` (one process, whole-recording engine);
* ``beam xN``      — ``birdnet-tf batch EXPORT FILES --window-s 3 --workers N`` (Beam's DirectRunner,
  ``direct_running_mode=multi_processing``: N worker processes, each loading the model once).

Each row is one command in a fresh process, timed from start to exit (Python, TensorFlow and
the model loads included: what a user waits for), so on a few minutes of audio the fixed
costs weigh; ``--audio`` can point at more. The real-time factor is audio seconds / wall
seconds. The Beam tables are checked against predict's (largest score difference).

Training rows (issue 14 item 1): one device against MirroredStrategy over two logical CPU
devices, and two worker processes on loopback (``multi_worker``), steps per second of the
default model at the same global batch (marked place below; ``--train-steps``).

    python benchmarks/scale_cpu.py [--export DIR] [--audio FOLDER_OR_GLOB ...] [--workers 1,2] [--json OUT]

Without ``--export`` an untrained model of the default architecture is exported once to
``runs/bench-scale/export`` (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import REPO, machine  # noqa: E402

WINDOW_S = 3.0


def _ensure_export(args) -> str:
    if args.export:
        return args.export
    export = REPO / "runs" / "bench-scale" / "export"
    if not (export / "saved_model.pb").is_file():
        import keras

        from birdnet_tf.config import Config
        from birdnet_tf.export import export_model
        from birdnet_tf.models.build import build_model

        cfg = Config()
        keras.utils.set_random_seed(0)
        labels = [f"species_{i:02d}" for i in range(20)]
        export_model(build_model(cfg, len(labels)), cfg, labels, export, force=True, log=lambda msg: None)
    return str(export)


def _audio_seconds(files: list[str]) -> float:
    import soundfile as sf

    return sum(sf.info(f).duration for f in files)


def _cli(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "birdnet_tf.cli", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:1])} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return wall, proc


# ------------------------------------------------------------------ archive inference rows
def inference_rows(export: str, files: list[str], workers: list[int], tmp: Path) -> list[dict]:
    import numpy as np
    import pandas as pd

    audio_s = _audio_seconds(files)
    rows = []
    wall, _ = _cli(["predict", export, *files, "--window-s", str(WINDOW_S), "--out", str(tmp / "predict.csv"),
                    "--no-progress"])
    reference = pd.read_csv(tmp / "predict.csv")
    rows.append({"row": "predict (whole-recording engine)", "workers": 1, "wall_s": wall, "audio_s": audio_s,
                 "rtf": audio_s / wall, "max_diff": 0.0})
    print(f"  predict: {wall:.1f} s", flush=True)
    for n in workers:
        out = tmp / f"beam-{n}"
        wall, _ = _cli(["batch", export, *files, "--window-s", str(WINDOW_S), "--workers", str(n), "--out", str(out),
                        "--no-progress", "--no-parquet"])
        table = pd.concat([pd.read_csv(s) for s in sorted(glob.glob(str(out / "scores-*.csv")))], ignore_index=True)
        if list(table["file"]) != list(reference["file"]):
            raise SystemExit(f"beam x{n}: its windows are not predict's")
        diff = float(np.abs(table.iloc[:, 3:].to_numpy() - reference.iloc[:, 3:].to_numpy()).max())
        manifest = json.loads((out / "manifest.json").read_text())
        rows.append({"row": f"beam DirectRunner x{n} (multi_processing)", "workers": n, "wall_s": wall,
                     "audio_s": audio_s, "rtf": audio_s / wall, "max_diff": diff,
                     "pipeline_s": manifest["seconds"]})
        print(f"  beam x{n}: {wall:.1f} s (pipeline {manifest['seconds']:.1f} s)", flush=True)
    return rows


# ------------------------------------------------------------------ training-strategy rows
# >>> issue 14 item 1: one-device against two-logical-device training steps per second.
# One fresh process splits the CPU into two logical devices and trains the default model
# (train.strategy one_device, then mirrored) on the same fixed batches of 16 (one device × 16,
# two replicas × 8): steps per second after one warm-up step, the math held equal by
# tests/test_distribute.py. On one CPU the two replicas share the same cores.
TRAIN_SCRIPT = """
import json, sys, time
import keras, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from birdnet_tf.config import Config
from birdnet_tf.train import loop
from birdnet_tf.train.sources import example_source
steps, data = int(sys.argv[1]), sys.argv[2]
out = []
for name, batch in (("one_device", 16), ("mirrored", 8)):
    cfg = Config().replace([f"train.strategy={name}", f"data.batch_size={batch}", "train.warmup_epochs=0"])
    x = np.random.default_rng(0).normal(size=(16 * (steps + 1), cfg.excerpt_samples)).astype("float32") * 0.1
    y = np.eye(20, dtype="float32")[np.arange(len(x)) % 20]
    keras.utils.set_random_seed(1)
    with loop.strategy_scope(cfg):
        model, fit_model, _ = loop.prepare_model(cfg, None, example_source(cfg, data), 20, steps, False)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    fit_model.fit(ds.take(1), epochs=1, verbose=0)
    t0 = time.perf_counter()
    fit_model.fit(ds.skip(1), epochs=1, verbose=0)
    wall = time.perf_counter() - t0
    out.append({"strategy": name, "replicas": 2 if name == "mirrored" else 1, "wall_s": wall, "steps_per_s": steps / wall})
print(json.dumps(out))
"""


def training_rows(args) -> list[dict]:
    steps = getattr(args, "train_steps", 10)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(f"training: default model, global batch 16, {steps} steps, one device vs 2 logical CPU devices", flush=True)
    proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(steps), str(REPO / "examples" / "xc-sample")],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"training rows failed:\n{proc.stderr[-2000:]}")
    rows = []
    for r in json.loads(proc.stdout.strip().splitlines()[-1]):
        rows.append({"row": f"train {r['strategy']} ({r['replicas']} replica(s)): {r['steps_per_s']:.2f} steps/s",
                     "workers": r["replicas"], "wall_s": r["wall_s"], "steps_per_s": r["steps_per_s"]})
        print(f"  train {r['strategy']}: {r['steps_per_s']:.2f} steps/s", flush=True)
    return rows


# Two worker processes on loopback (train.strategy=multi_worker): the default model in
# MultiWorkerMirroredStrategy, the training loop's own step (birdnet_tf.train.custom_loop), each
# worker a batch of 8 of its own data (a global batch of 16, as the rows above); steps per second
# after one warm-up step, timed on the chief. Both processes share this machine's cores and talk
# through gRPC on loopback: this shows the overhead, not a speed-up.
MULTI_WORKER_SCRIPT = """
import json, sys, time
import keras, numpy as np, tensorflow as tf
from birdnet_tf.config import Config
from birdnet_tf.train import loop
from birdnet_tf.train.custom_loop import train_function
from birdnet_tf.train.distribute import resolve
from birdnet_tf.train.sources import example_source
steps, data = int(sys.argv[1]), sys.argv[2]
cfg = Config().replace(["train.strategy=multi_worker", "data.batch_size=8", "train.warmup_epochs=0"])
dist = resolve(cfg, log=lambda *a: None)
rng = np.random.default_rng(dist.worker_index)
x = rng.normal(size=(8 * (steps + 1), cfg.excerpt_samples)).astype("float32") * 0.1
y = np.eye(20, dtype="float32")[np.arange(len(x)) % 20]
ds = dist.strategy.distribute_datasets_from_function(
    lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(ctx.get_per_replica_batch_size(16)).repeat())
keras.utils.set_random_seed(1)
with loop.strategy_scope(cfg):
    model, fit_model, _ = loop.prepare_model(cfg, None, example_source(cfg, data), 20, steps, False)
step, batches = train_function(fit_model, dist.strategy), iter(ds)
float(step(batches))
t0 = time.perf_counter()
for _ in range(steps):
    float(step(batches))
wall = time.perf_counter() - t0
if dist.chief:
    print(json.dumps({"strategy": "multi_worker", "replicas": dist.replicas, "wall_s": wall, "steps_per_s": steps / wall}))
"""


def multi_worker_row(args) -> dict:
    import socket

    steps = getattr(args, "train_steps", 10)
    socks = [socket.socket() for _ in range(2)]
    for sock in socks:
        sock.bind(("localhost", 0))
    cluster = {"worker": [f"localhost:{sock.getsockname()[1]}" for sock in socks]}
    for sock in socks:
        sock.close()
    print(f"training: default model, two workers on loopback, 2 x 8 per step, {steps} steps", flush=True)
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            with open(Path(tmp) / f"worker{i}.log", "w") as log:
                procs.append(subprocess.Popen([sys.executable, "-c", MULTI_WORKER_SCRIPT, str(steps),
                                               str(REPO / "examples" / "xc-sample")], stdout=log,
                                              stderr=subprocess.STDOUT, env=env, cwd=REPO))
        try:
            for proc in procs:
                proc.wait(timeout=600)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        text = (Path(tmp) / "worker0.log").read_text()
        if any(proc.returncode for proc in procs):
            raise SystemExit("multi_worker row failed:\n" + text[-2000:] + (Path(tmp) / "worker1.log").read_text()[-1000:])
    r = json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
    print(f"  train multi_worker: {r['steps_per_s']:.2f} steps/s", flush=True)
    return {"row": f"train two workers on loopback (multi_worker, {r['replicas']} replicas): "
                   f"{r['steps_per_s']:.2f} steps/s", "workers": 2, "wall_s": r["wall_s"], "steps_per_s": r["steps_per_s"]}
# <<< training-strategy rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", default=None, help="an export folder (default: an untrained default-architecture one)")
    ap.add_argument("--audio", nargs="+", default=[str(REPO / "examples" / "xc-sample" / "audio")],
                    help="audio folders, files or globs (default: the embedded sample, 23 files, 7.7 min)")
    ap.add_argument("--workers", default="1,2", help="Beam worker counts to run (default: %(default)s)")
    ap.add_argument("--train-steps", type=int, default=10, help="training steps timed per strategy (default: %(default)s)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    from birdnet_tf.infer.beam import expand_paths

    files, problems = expand_paths(args.audio)
    if problems or not files:
        raise SystemExit(f"bad --audio: {problems[:3] or 'no files'}")
    export = _ensure_export(args)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"model: {export}\naudio: {len(files)} files\n")
    with tempfile.TemporaryDirectory() as tmp:
        rows = inference_rows(export, files, [int(n) for n in args.workers.split(",") if n], Path(tmp))
    rows += training_rows(args)
    rows.append(multi_worker_row(args))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}\n")
    print("| row | workers | wall s | audio s | real-time factor | max score diff vs predict |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['workers']} | {r['wall_s']:.1f} | {r.get('audio_s', float('nan')):.0f} | "
              f"{r.get('rtf', float('nan')):.1f} | {r.get('max_diff', float('nan')):.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
