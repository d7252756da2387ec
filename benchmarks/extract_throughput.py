"""Spectrogram-chunk extraction throughput: chunks per wall second, birdnet-tf extract vs librosa.

Both sides do the same per-file work on the same xc-pr20 recordings (MP3 and Ogg),
in one process each: decode at 44.1 kHz → 1-s chunks every 0.75 s → mel
spectrogram (128 × 256, n_fft 1024, power 1, dB relative to the chunk's peak, floor
-80 dB, 0..1) → the baseline's signal/noise score → PNG for the kept chunks and
about 10 % of the rejected ones.

* birdnet-tf: ``birdnet_tf.data.extract.extract(workers=1)`` on a dataset of
  those recordings (soundfile + soxr decoding, TF-ops spectrograms in batches of
  64 chunks, the NumPy + OpenCV score, atomic ``cv2.imwrite``, per-file index
  rows). TensorFlow uses its default thread pools (both cores) unless
  ``--tf-threads`` is given.
* librosa: ``librosa.load(sr=44100)``, then per chunk
  ``librosa.feature.melspectrogram`` + ``librosa.amplitude_to_db``, the same NumPy
  score (:func:`~birdnet_tf.frontend.signal_noise.signal_noise_score`) and
  ``cv2.imwrite`` - the straightforward way the 2018 baseline did it.

Imports, TF tracing and librosa's first-call set-up are warmed up before timing.

    python benchmarks/extract_throughput.py [--files 20] [--tf-threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine, xc_pr20


def librosa_extract(paths: list[str], cfg, out_dir: Path) -> tuple[int, int]:
    """The straightforward per-chunk implementation; returns (chunks, kept)."""
    import cv2
    import librosa

    from birdnet_tf.data.audio import _filtered_native_stderr
    from birdnet_tf.frontend.chunks import spec_params
    from birdnet_tf.frontend.signal_noise import signal_noise_score

    p = spec_params(cfg)
    rng = np.random.default_rng(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = kept = 0
    for path in paths:
        with _filtered_native_stderr():  # libmpg123's "Note: ..." lines, as birdnet-tf hides them
            y, sr = librosa.load(path, sr=cfg.sample_rate_hz)
        stem = Path(path).stem
        for start in range(0, len(y), p.step_samples):
            piece = y[start:start + p.chunk_samples]
            if len(piece) < p.min_samples:
                break
            if len(piece) < p.chunk_samples:
                piece = np.pad(piece, (0, p.chunk_samples - len(piece)))
            mel = librosa.feature.melspectrogram(y=piece, sr=sr, n_fft=p.n_fft, hop_length=p.hop_length,
                                                 n_mels=cfg.height, fmin=cfg.fmin_hz, fmax=cfg.fmax_hz, power=1.0)
            db = librosa.amplitude_to_db(mel[:, :cfg.width], ref=np.max, top_db=cfg.top_db)
            img = (db + cfg.top_db) / cfg.top_db  # [height, width]
            score = signal_noise_score(img.T)
            chunks += 1
            signal = score >= cfg.signal_threshold
            kept += signal
            if signal or rng.random() < cfg.noise_fraction:
                name = f"{stem}_{start * 1000 // sr}_{int(score * 10000)}.png"
                cv2.imwrite(str(out_dir / name), np.flipud(np.rint(img * 255).astype(np.uint8)))
    return chunks, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20, help="xc-pr20 recordings, spread over the sorted list")
    ap.add_argument("--tf-threads", type=int, default=0, help="TF intra/inter-op threads (0 = TF's default)")
    args = ap.parse_args()

    import pandas as pd
    import tensorflow as tf

    if args.tf_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.tf_threads)

    from birdnet_tf.config import ChunkConfig
    from birdnet_tf.data.extract import extract
    from birdnet_tf.frontend.chunks import compiled_chunk_spectrogram, spec_params
    from birdnet_tf.data.audio import audio_duration_s

    cfg = ChunkConfig()
    xc = xc_pr20()
    meta = pd.read_csv(xc / "metadata.csv", dtype=str, keep_default_na=False).sort_values("filename")
    step = max(1, len(meta) // args.files)
    meta = meta.iloc[::step].head(args.files).reset_index(drop=True)
    paths = [str(xc / f) for f in meta["filename"]]
    minutes = sum(audio_duration_s(p) for p in paths) / 60
    print(f"machine: {machine()}")
    print(f"data: {len(paths)} xc-pr20 recordings ({sum(p.endswith('.mp3') for p in paths)} MP3), "
          f"{minutes:.1f} min; chunks {cfg.chunk_s} s every {cfg.chunk_s - cfg.overlap_s} s at "
          f"{cfg.sample_rate_hz} Hz, {cfg.height} mels x {cfg.width} frames")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        (data / "audio").symlink_to(xc / "audio", target_is_directory=True)
        meta.to_csv(data / "metadata.csv", index=False)
        quiet = lambda msg: None  # noqa: E731

        # ---- warm-up: imports, the tf.function trace, librosa's lazy set-up
        compiled_chunk_spectrogram(cfg)(np.zeros((2, spec_params(cfg).chunk_samples), np.float32))
        librosa_extract(paths[:1], cfg, tmp / "warm-librosa")

        # ---- birdnet-tf extract, one process
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            r = extract(data, tmp / "ours", cfg, workers=1, progress=False, log=quiet)
            ours_s = time.perf_counter() - t
        if r.failed:
            print(f"birdnet-tf: {len(r.failed)} file(s) failed: {r.failed}")

        # ---- librosa per chunk, one process
        t = time.perf_counter()
        lib_chunks, lib_kept = librosa_extract(paths, cfg, tmp / "librosa")
        lib_s = time.perf_counter() - t

    ours, lib = r.chunks / ours_s, lib_chunks / lib_s
    print(f"{'pipeline':<46}{'chunks':>8}{'kept':>7}{'chunks / s':>12}{'vs librosa':>13}")
    print(f"{'birdnet-tf extract (TF spectrograms)':<46}{r.chunks:>8}{r.kept:>7}{ours:>12.1f}{ours / lib:>12.2f}x")
    print(f"{'librosa per chunk (load+melspectrogram)':<46}{lib_chunks:>8}{lib_kept:>7}{lib:>12.1f}{1.0:>12.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
