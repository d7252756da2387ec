"""Peak memory of ``birdnet-tf prepare`` on one long recording (generated, default 3 hours).

Usage::

    python benchmarks/prepare_memory.py [--hours 3] [--source-rate 16000] [--code DIR] [--keep DIR]

Writes a long 16-bit WAV at ``--source-rate`` (birdsong-like tones in noise, written block by
block), then runs ``birdnet-tf prepare`` on it (one worker, resampled to the default 22.05 kHz)
in a fresh process and prints that process's peak resident memory (``ru_maxrss`` of the
child). ``--code DIR`` runs another checkout's ``birdnet_tf`` (e.g. the main branch) for a
before/after comparison. Target: under 500 MB whatever the length.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def write_long_wav(path: Path, hours: float, rate: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    n_total = int(hours * 3600 * rate)
    block = rate * 60
    t = np.arange(block) / rate
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        done = 0
        while done < n_total:
            n = min(block, n_total - done)
            freq = rng.uniform(1500, min(7000, rate / 2 - 500))
            x = 0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * freq * t[:n]) * (np.sin(np.pi * t[:n]) > 0.5)
            f.write(x.astype(np.float32))
            done += n
    return n_total / rate


#: Runs the CLI in the child and prints its own peak RSS and its workers' (KiB on Linux).
_MEASURE = """
import resource, sys
from birdnet_tf.cli import main
sys.argv = sys.argv[1:]
try:
    rc = main(sys.argv[1:])
finally:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("PEAK_KIB", max(own, kids), flush=True)
sys.exit(rc)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--source-rate", type=int, default=16000)
    ap.add_argument("--code", default=str(ROOT), help="checkout whose birdnet_tf runs (default: this one)")
    ap.add_argument("--keep", default=None, help="work folder to use and keep (default: a temporary one)")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="prepare_memory_"))
    data = work / "data" / "Long species"
    data.mkdir(parents=True, exist_ok=True)
    wav = data / "long.wav"
    if not wav.is_file():
        t0 = time.time()
        seconds = write_long_wav(wav, args.hours, args.source_rate)
        print(f"wrote {wav} ({seconds / 3600:.2f} h at {args.source_rate} Hz, "
              f"{wav.stat().st_size / 1e6:.0f} MB) in {time.time() - t0:.0f} s", flush=True)
    out = work / f"prepared-{os.getpid()}"
    env = {**os.environ, "PYTHONPATH": str(Path(args.code).resolve()), "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.time()
    argv = ["birdnet-tf", "prepare", str(work / "data"), "--out", str(out), "--workers", "1", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *argv], env=env, capture_output=True, text=True,
                          cwd=work)  # not this folder: "-c" puts the working folder first on sys.path
    wall = time.time() - t0
    peaks = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_KIB ")]
    peak_mb = max(peaks) / 1024 if peaks else float("nan")
    print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("PEAK_KIB"))[-400:])
    if proc.returncode != 0:
        print(proc.stderr.strip()[-2000:], file=sys.stderr)
    print(f"prepare ({args.code}): {args.hours:g} h at {args.source_rate} Hz -> 22050 Hz; exit {proc.returncode}; "
          f"peak memory {peak_mb:.0f} MB; {wall:.0f} s")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
