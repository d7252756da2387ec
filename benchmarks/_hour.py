"""The shared benchmark audio: one deterministic hour of real recordings in one file.

The recordings of ``xc-pr20/audio`` are taken sorted by name, decoded and resampled with
:func:`birdnet_tf.data.audio.load_audio`, and concatenated (looping over the list if it
is too short) until ``seconds`` are filled; the result is written as 16-bit mono FLAC (or
WAV). Files are cached under ``$BIRDNET_TF_CACHE/bench`` (default
``~/.cache/birdnet-tf/bench``) by a name that encodes the parameters and the source
files, so every benchmark run after the first reuses them.

    python benchmarks/_hour.py [--seconds 3600] [--rate 48000] [--wav] [--files N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from _common import xc_pr20

#: Bump when the way the hour is built changes, so old cached files are not reused.
_RECIPE = 1
_FORMATS = {"flac": "FLAC", "wav": "WAV"}


def _sources(audio_dir: Path) -> list[Path]:
    from birdnet_tf.data.audio import AUDIO_EXTENSIONS

    files = sorted(p for p in audio_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise SystemExit(f"{audio_dir}: no audio files to build the benchmark hour from")
    return files


def _cache_name(sources: list[Path], seconds: float, sample_rate_hz: int, fmt: str) -> str:
    """``<folder>-<seconds>s-<rate>hz-<digest>.<fmt>``; the digest covers the source names and sizes."""
    h = hashlib.sha1(f"recipe {_RECIPE}\n".encode())
    for p in sources:
        h.update(f"{p.name} {p.stat().st_size}\n".encode())
    return f"{sources[0].parent.parent.name}-{seconds:g}s-{sample_rate_hz}hz-{h.hexdigest()[:8]}.{fmt}"


def _matches(path: Path, seconds: float, sample_rate_hz: int) -> bool:
    """Whether ``path`` is a 16-bit mono file of exactly ``seconds`` at ``sample_rate_hz``."""
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError):
        return False
    return (info.samplerate == sample_rate_hz and info.channels == 1 and info.subtype == "PCM_16"
            and info.frames == round(seconds * sample_rate_hz))


def _check_args(seconds: float, sample_rate_hz: int, fmt: str) -> None:
    if not seconds > 0:
        raise SystemExit(f"seconds must be positive, got {seconds!r}")
    if int(sample_rate_hz) != sample_rate_hz or sample_rate_hz <= 0:
        raise SystemExit(f"sample_rate_hz must be a positive integer, got {sample_rate_hz!r}")
    if fmt not in _FORMATS:
        raise SystemExit(f"fmt must be one of {sorted(_FORMATS)}, got {fmt!r}")


def _cache_dir() -> Path:
    from birdnet_tf.data.dataset import default_cache_root

    return default_cache_root() / "bench"


def make_hour(out_path: str | os.PathLike | None = None, seconds: float = 3600, sample_rate_hz: int = 48000,
              fmt: str = "flac", source_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Builds (or reuses) ``seconds`` of concatenated xc-pr20 recordings as one 16-bit mono file.

    Args:
        out_path: The file to write. ``None``: the cache folder, under a name encoding
            the parameters (reused when it exists and has the expected length).
        seconds: Length of the result in seconds (exact, in samples).
        sample_rate_hz: Sample rate of the result in Hz.
        fmt: ``"flac"`` or ``"wav"`` (both 16-bit PCM).
        source_dir: A dataset folder with an ``audio/`` subfolder (default: xc-pr20).
        force: Rebuild the file even if it exists (an explicit ``out_path`` that exists
            but is not this audio is otherwise refused).

    Returns:
        The path of the file.
    """
    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.errors import AudioDecodeError
    from birdnet_tf.fileio import atomic_path

    _check_args(seconds, sample_rate_hz, fmt)
    sources = _sources(Path(source_dir or xc_pr20()) / "audio")
    if out_path is None:
        path = _cache_dir() / _cache_name(sources, seconds, sample_rate_hz, fmt)
        if path.is_file() and _matches(path, seconds, sample_rate_hz) and not force:
            return path
    else:
        path = Path(out_path)
        if path.suffix.lower() != f".{fmt}":
            raise SystemExit(f"{path}: the name should end in .{fmt} for fmt={fmt!r}")
        if path.exists():
            if _matches(path, seconds, sample_rate_hz) and not force:
                return path
            if not force:
                raise SystemExit(f"{path}: exists and is not {seconds:g} s of 16-bit mono audio at "
                                 f"{sample_rate_hz} Hz; pass force=True (--force) to overwrite it")

    total = round(seconds * sample_rate_hz)
    written, skipped, i = 0, [], 0
    with atomic_path(path, suffix=f".{fmt}") as tmp, \
            sf.SoundFile(str(tmp), "w", sample_rate_hz, 1, "PCM_16", format=_FORMATS[fmt]) as out:
        while written < total:
            src = sources[i % len(sources)]
            i += 1
            if i > len(sources) and len(skipped) == len(sources):
                raise SystemExit(f"{src.parent}: none of the {len(sources)} audio files could be decoded")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # low source rates are expected and harmless here
                    audio, _ = load_audio(src, sample_rate_hz)
            except AudioDecodeError as e:
                if i <= len(sources):
                    warnings.warn(f"skipped: {e}", stacklevel=2)
                    skipped.append(src)
                continue
            piece = audio[: total - written]
            out.write(np.clip(piece, -1.0, 1.0))
            written += piece.size
    if skipped:
        print(f"{path.name}: {len(skipped)} of {len(sources)} source files could not be decoded and were skipped")
    return path


def make_files(n_files: int, seconds: float = 3600, sample_rate_hz: int = 48000, fmt: str = "flac",
               force: bool = False) -> list[Path]:
    """The same audio as :func:`make_hour` (default cache file), cut into ``n_files`` consecutive files.

    Cached in a folder beside the hour (``<hour name>-x<n_files>/part-0001.<fmt>`` ...);
    the parts differ in length by at most one sample.

    Returns:
        The part files in order.
    """
    if int(n_files) != n_files or n_files < 1:
        raise SystemExit(f"n_files must be a positive integer, got {n_files!r}")
    hour = make_hour(None, seconds, sample_rate_hz, fmt)
    folder = hour.with_name(f"{hour.stem}-x{n_files}")
    names = [f"part-{k + 1:04d}.{fmt}" for k in range(n_files)]
    if folder.is_dir() and not force and all((folder / n).is_file() for n in names):
        return [folder / n for n in names]

    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        total = round(seconds * sample_rate_hz)
        bounds = np.linspace(0, total, n_files + 1).round().astype(int)
        with sf.SoundFile(str(hour)) as src:
            for name, a, b in zip(names, bounds[:-1], bounds[1:]):
                sf.write(str(tmp / name), src.read(b - a, dtype="int16"), sample_rate_hz, "PCM_16",
                         format=_FORMATS[fmt])
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [folder / n for n in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3600, help="length of the audio in seconds (default 3600)")
    ap.add_argument("--rate", type=int, default=48000, help="sample rate in Hz (default 48000)")
    ap.add_argument("--wav", action="store_true", help="write 16-bit WAV instead of FLAC")
    ap.add_argument("--files", type=int, default=0, help="also cut the audio into this many files")
    ap.add_argument("--out", help="write the single file here instead of the cache")
    ap.add_argument("--force", action="store_true", help="overwrite --out (or rebuild the parts)")
    args = ap.parse_args()
    fmt = "wav" if args.wav else "flac"
    path = make_hour(args.out, args.seconds, args.rate, fmt, force=args.force)
    print(path)
    if args.files:
        parts = make_files(args.files, args.seconds, args.rate, fmt, force=args.force)
        print(f"{parts[0].parent} ({len(parts)} files)")


if __name__ == "__main__":
    main()
