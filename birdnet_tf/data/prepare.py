"""The ``prepare`` stage: decode a dataset's audio once into 16-bit mono WAV.

Every source file (any format :func:`~birdnet_tf.data.audio.load_audio` reads)
is decoded, down-mixed, resampled to one rate and written as
``out_dir/<key with suffix .wav>``. The job is parallel, resumable (valid
outputs from an earlier run are kept) and never stops on a bad file: failures
are recorded with their reason and reported at the end (the runner
:func:`~birdnet_tf.data.jobs.run_jobs`, shared with ``extract``).

Files written in ``out_dir`` besides the WAVs:

* ``.birdnet_tf_prepared.json`` - a marker holding the sample rate; a later run
  with another rate into the same folder is refused.
* ``prepare_report.json`` - counts and failures of the latest run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from birdnet_tf.data.audio import iter_audio, read_wav_header
from birdnet_tf.data.jobs import check_workers, failure_reason, one_line, run_jobs
from birdnet_tf.fileio import atomic_path, entry_problem, remove_stale_parts, write_json_atomic
from birdnet_tf.errors import BirdnetError

__all__ = ["MARKER_NAME", "REPORT_NAME", "PrepareResult", "prepare", "output_path_for"]

#: Marker file in ``out_dir`` that records the sample rate of its WAVs.
MARKER_NAME = ".birdnet_tf_prepared.json"
#: Report of the latest run, written in ``out_dir``.
REPORT_NAME = "prepare_report.json"
_MARKER_FORMAT = "wav-pcm16-mono"


@dataclass
class PrepareResult:
    """What a :func:`prepare` run produced.

    Attributes:
        out_dir: The output folder.
        sample_rate_hz: Sample rate of every WAV in ``done``, in Hz.
        done: For every source that has a valid WAV (converted in this run or
            kept from an earlier one): ``key -> (wav_path, duration_s)``.
        failed: ``(key, source_path, reason)`` for every source that could not
            be converted; ``reason`` is one line.
        converted: Number of files decoded and written in this run.
        skipped: Number of files whose valid WAV from an earlier run was kept.
        elapsed_s: Wall-clock time of the run in seconds.
    """

    out_dir: Path
    sample_rate_hz: int
    done: dict[str, tuple[Path, float]] = field(default_factory=dict)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    converted: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0

    @property
    def total_duration_s(self) -> float:
        """Summed duration of all WAVs in ``done``, in seconds."""
        return float(sum(d for _, d in self.done.values()))

    def summary(self) -> str:
        """A multi-line, human-readable account of the run.

        Returns:
            Lines with the number converted, already done and failed, then one
            line per failure with its key, source path and reason.
        """
        lines = [
            f"prepare: {len(self.done) + len(self.failed)} files -> {self.out_dir} "
            f"({self.sample_rate_hz} Hz, 16-bit mono WAV), {self.elapsed_s:.1f} s",
            f"  {self.converted} converted",
            f"  {self.skipped} already done (kept)",
            f"  {len(self.failed)} failed",
        ]
        for key, src, reason in self.failed:
            lines.append(f"    {key} ({src}): {reason}")
        if self.done:
            lines.append(f"  total audio: {self.total_duration_s / 3600:.2f} h in {len(self.done)} files")
        return "\n".join(lines)


def output_path_for(out_dir: str | os.PathLike, key: str) -> Path:
    """The WAV path that :func:`prepare` writes for ``key``.

    Args:
        out_dir: The output folder.
        key: Relative path of the source, e.g. ``"audio/XC1192.mp3"``.

    Returns:
        ``out_dir / key`` with its suffix replaced by ``.wav``.
    """
    rel = PurePosixPath(str(key).replace("\\", "/"))
    return Path(out_dir).joinpath(*rel.parts).with_suffix(".wav")


# --------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------


class _File(NamedTuple):
    """One file of a prepare job."""

    key: str
    path: Path
    output: Path


def _convert_one(source: str, output: str, sample_rate_hz: int) -> tuple[float | None, str | None, list[str]]:
    """Decodes ``source`` and writes ``output``; runs in a worker process.

    Returns:
        ``(duration_s, error, warnings)``: ``duration_s`` of the written WAV in
        seconds (``None`` on failure), a one-line ``error`` (``None`` on
        success) and the texts of warnings raised while decoding, which the
        parent re-issues.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = Path(output)
            out.parent.mkdir(parents=True, exist_ok=True)
            before = _fingerprint(source)
            n = stream_wav16(lambda: iter_audio(source, sample_rate_hz, clip=False), out, sample_rate_hz)
            result: tuple[float | None, str | None] = (n / sample_rate_hz, None)
            if _fingerprint(source) != before:  # a copy still arriving, a recorder still writing
                with contextlib.suppress(OSError):
                    out.unlink()
                result = (None, "changed while it was read (size or modification time); "
                                "run prepare again once it is complete")
        except Exception as e:  # noqa: BLE001 - one file must never stop the job
            result = (None, failure_reason(e, source))
    return result[0], result[1], [one_line(w.message) for w in caught]


def stream_wav16(blocks: Callable[[], Iterable[np.ndarray]], path: Path, sample_rate_hz: int) -> int:
    """Writes the float blocks of ``blocks()`` as a mono 16-bit PCM WAV (canonical 44-byte
    header), atomically, holding one block in memory whatever the recording's length.

    Like :func:`~birdnet_tf.data.audio.write_wav16`, a signal whose peak exceeds 1 is scaled
    down by its peak rather than clipped: the peak is known only at the end, so such a
    file (a float WAV, a codec's overshoot) is decoded a second time. Returns the sample count.
    """
    import struct

    def header(n: int) -> bytes:
        return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + 2 * n, b"WAVE", b"fmt ", 16, 1, 1,
                           sample_rate_hz, sample_rate_hz * 2, 2, 16, b"data", 2 * n)

    def write(tmp: Path, scale: float) -> tuple[int, float]:
        n, peak = 0, 0.0
        with open(tmp, "wb") as f:
            f.write(header(0))
            for block in blocks():
                x = np.asarray(block, np.float32)
                if x.size:
                    peak = max(peak, float(np.max(np.abs(x))))
                    f.write(np.rint(np.clip(x * np.float32(scale), -32767.0, 32767.0)).astype("<i2").tobytes())
                    n += x.size
            if 2 * n + 36 >= 2**32:
                raise BirdnetError(f"{path}: too long for a WAV file ({n / sample_rate_hz / 3600:.1f} h)")
            f.seek(0)
            f.write(header(n))
        return n, peak

    with atomic_path(path) as tmp:
        n, peak = write(tmp, 32767.0)
        if peak > 1.0:
            n, _ = write(tmp, 32767.0 / peak)
    return n


def _fingerprint(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(size, modification time in ns)`` of ``path`` (following links), None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _newer_than(source: Path, output: Path) -> bool:
    """True when ``source`` was modified after ``output`` was written (prepared from an older version)."""
    src, out = _fingerprint(source), _fingerprint(output)
    return src is not None and out is not None and src[1] > out[1]


def _valid_output(path: Path, sample_rate_hz: int) -> float | None:
    """Duration in seconds of ``path`` if it is a complete 16-bit mono PCM WAV at the rate."""
    h = read_wav_header(path)
    if (
        h is None
        or h.format_tag != 1
        or h.channels != 1
        or h.bits_per_sample != 16
        or h.sample_rate_hz != sample_rate_hz
        or h.n_frames <= 0
    ):
        return None
    return h.n_frames / h.sample_rate_hz


# --------------------------------------------------------------------------
# Marker and report
# --------------------------------------------------------------------------


def _check_marker(out_dir: Path, sample_rate_hz: int, source: str | None = None) -> None:
    """Refuses an ``out_dir`` that this package did not write (not empty, no marker), one prepared
    at another rate, or one prepared from another dataset (``source``): files are never mixed."""
    marker = out_dir / MARKER_NAME
    if not marker.exists():
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise BirdnetError(
                f"{out_dir}: folder is not empty and was not written by prepare (no {MARKER_NAME}); "
                "refusing to write into it — choose a new output folder")
        return
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        rate = int(data["sample_rate_hz"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BirdnetError(
            f"{marker}: unreadable prepare marker ({one_line(e)}); "
            "delete it or choose another output folder"
        ) from None
    if rate != sample_rate_hz:
        raise BirdnetError(
            f"{out_dir}: already holds audio prepared at {rate} Hz, not {sample_rate_hz} Hz; "
            "choose another output folder (rates are never mixed in one folder)"
        )
    old = data.get("source")
    if source is not None and old is not None and old != source:
        raise BirdnetError(
            f"{out_dir}: already holds audio prepared from {old}, not {source}; "
            "choose another output folder (datasets are never mixed in one folder)"
        )


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip():
        raise BirdnetError(f"prepare: invalid key {key!r} (expected a relative path such as 'audio/XC1.mp3')")
    problem = entry_problem(key)  # the dataset-entry rule catalog, sort and extract share
    if problem is not None:
        raise BirdnetError(f"prepare: key {key!r} must be a relative path inside the output folder ({problem})")
    posix = PurePosixPath(key.replace("\\", "/"))
    if posix.name in ("", ".", MARKER_NAME, REPORT_NAME):
        raise BirdnetError(f"prepare: key {key!r} does not name a file")
    return key


def _plan(files: Iterable[tuple[str, str | os.PathLike]], out_dir: Path) -> list[_File]:
    """Validates ``files`` and pairs each with its output path.

    Raises:
        BirdnetError: A key is invalid or repeated, two keys map to the same
            output, or an output would overwrite or sit next to a source.
    """
    plan: list[_File] = []
    by_output: dict[Path, str] = {}
    keys: set[str] = set()
    source_dirs: dict[Path, Path] = {}
    out_resolved = out_dir.resolve()
    for item in files:
        try:
            key, source = item
        except (TypeError, ValueError):
            raise BirdnetError(f"prepare: expected (key, source_path) pairs, got {item!r}") from None
        key = _check_key(key)
        if key in keys:
            raise BirdnetError(f"prepare: key {key!r} appears more than once")
        keys.add(key)
        src = Path(source)
        out = output_path_for(out_dir, key)
        # Resolve without requiring existence; a missing source fails later, per file.
        out_r = out_resolved.joinpath(*out.relative_to(out_dir).parts)
        src_r = src.resolve()
        if out_r in by_output:
            raise BirdnetError(
                f"prepare: keys {by_output[out_r]!r} and {key!r} would both be written to {out}"
            )
        by_output[out_r] = key
        if out_r == src_r:
            raise BirdnetError(
                f"prepare: output {out} would overwrite its source {src}; choose another output folder"
            )
        source_dirs.setdefault(src_r.parent, src)
        plan.append(_File(key, src, out))
    for src_dir, src in source_dirs.items():
        if out_resolved == src_dir or out_resolved.is_relative_to(src_dir):
            raise BirdnetError(
                f"prepare: output folder {out_dir} is inside the source folder {src_dir} "
                f"(which holds {src}); choose an output folder outside the dataset's audio folders"
            )
    for out_r, key in by_output.items():
        if out_r.parent in source_dirs:
            raise BirdnetError(
                f"prepare: output for {key!r} would be written into the source folder "
                f"{out_r.parent} (next to {source_dirs[out_r.parent]}); choose an output folder "
                "outside the dataset's audio folders"
            )
    return plan


# --------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------


def prepare(
    files: Sequence[tuple[str, str | os.PathLike]],
    out_dir: str | os.PathLike,
    sample_rate_hz: int,
    workers: int = 2,
    progress: bool = True,
    source: str | None = None,
) -> PrepareResult:
    """Decodes audio files into 16-bit mono WAV at one sample rate.

    Each source is written to ``out_dir / key`` with its suffix replaced by
    ``.wav`` (subfolders are created). Outputs are written atomically, so an
    interrupted run leaves only complete files, and a later run keeps every
    existing output that is a valid 16-bit mono WAV at ``sample_rate_hz``
    (counted as skipped). A file that fails is recorded with its reason and
    warned about; the other files go on.

    Args:
        files: ``(key, source_path)`` pairs; ``key`` is a unique relative path
            such as ``"audio/XC1192.mp3"``.
        out_dir: Output folder, created if missing. Must not be a folder that
            holds source files.
        sample_rate_hz: Sample rate of the outputs in Hz.
        workers: Number of worker processes; 1 converts in this process.
            Workers are forked on Linux when this process runs no other
            threads and has not imported TensorFlow, otherwise spawned (a
            script that calls this with spawned workers needs the usual
            ``if __name__ == "__main__":`` guard; see
            :func:`~birdnet_tf.data.jobs.pool_context`).
        progress: Show a tqdm progress bar (only on a terminal).
        source: What the files come from (a dataset folder), recorded in the marker; a
            folder prepared from another source is refused.

    Returns:
        The :class:`PrepareResult`; its ``summary()`` is ready to print.

    Raises:
        BirdnetError: Invalid or repeated keys, an output that would overwrite
            or sit next to a source, or ``out_dir`` already prepared at another
            sample rate.
        ValueError: ``sample_rate_hz`` or ``workers`` is not a positive integer.
    """
    t0 = time.monotonic()
    if isinstance(sample_rate_hz, bool) or int(sample_rate_hz) != sample_rate_hz or sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be a positive integer, got {sample_rate_hz!r}")
    sample_rate_hz = int(sample_rate_hz)
    workers = check_workers(workers)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BirdnetError(f"{out_dir}: output folder exists but is not a folder")

    plan = _plan(files, out_dir)
    _check_marker(out_dir, sample_rate_hz, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out_dir / MARKER_NAME, {"sample_rate_hz": sample_rate_hz, "format": _MARKER_FORMAT,
                                **({"source": source} if source is not None else {})}
    )
    remove_stale_parts(*{out.parent for _, _, out in plan})  # WAVs of a killed run

    result = PrepareResult(out_dir=out_dir, sample_rate_hz=sample_rate_hz)

    def done_before(item: _File) -> float | None:
        duration = _valid_output(item.output, sample_rate_hz)
        # a source changed since it was prepared is prepared again
        return None if duration is None or _newer_than(item.path, item.output) else duration

    def on_done(item: _File, duration: float, fresh: bool) -> None:
        result.done[item.key] = (item.output, float(duration))
        if fresh:
            result.converted += 1
        else:
            result.skipped += 1

    def on_failed(item: _File, reason: str) -> None:
        result.failed.append((item.key, str(item.path), reason))

    try:
        run_jobs(plan, _convert_one, lambda item: (str(item.path), str(item.output), sample_rate_hz),
                 name="prepare", workers=workers, on_done=on_done, on_failed=on_failed, done_before=done_before,
                 progress=progress,
                 crash_reason="the worker process died while decoding (decoder crash or out of memory)")
    finally:
        result.failed.sort()
        result.done = dict(sorted(result.done.items()))
        result.elapsed_s = time.monotonic() - t0
        with contextlib.suppress(OSError):
            _write_report(result, n_files=len(plan))
    return result


def _write_report(result: PrepareResult, n_files: int) -> None:
    write_json_atomic(
        result.out_dir / REPORT_NAME,
        {
            "sample_rate_hz": result.sample_rate_hz,
            "format": _MARKER_FORMAT,
            "files": n_files,
            "converted": result.converted,
            "skipped": result.skipped,
            "failed_count": len(result.failed),
            "failed": [{"key": k, "source": s, "reason": r} for k, s, r in result.failed],
            "total_duration_s": round(result.total_duration_s, 3),
            "elapsed_s": round(result.elapsed_s, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
