"""Audio decoding, resampling and 16-bit WAV writing.

Everything downstream of the ``prepare`` stage reads 16-bit mono PCM WAV files
(the only kind ``tf.audio.decode_wav`` accepts). This module turns whatever a
dataset ships (WAV of any bit depth, FLAC, Ogg Vorbis/Opus, MP3; mono or
stereo; any sample rate) into float32 mono signals, and writes them back as
16-bit WAV.

Decoding uses :mod:`soundfile` (libsndfile) and resampling :mod:`soxr`. No
TensorFlow import happens here.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

from birdnet_tf.errors import AudioDecodeError
from birdnet_tf.fileio import filtered_native_stderr, temp_file_beside

__all__ = [
    "AUDIO_EXTENSIONS",
    "audio_duration_s",
    "header_frames",
    "load_audio",
    "read_wav_header",
    "temp_file_beside",
    "WavHeader",
    "write_wav16",
]

#: File suffixes (lower case) that :func:`load_audio` can decode. ``.opus`` is
#: Opus in an Ogg container, which libsndfile >= 1.0.29 reads.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")

#: Frames read per block while decoding (about 0.7 s at 96 kHz).
_BLOCK_FRAMES = 65536

#: Warn when the source rate is below this fraction of the target rate: the
#: band between the two Nyquist frequencies is then empty after resampling.
_LOW_RATE_FRACTION = 0.8

#: Lines that libmpg123 (inside libsndfile) prints straight to file descriptor 2.
_DECODER_NOISE = re.compile(rb"^(Note: |Warning: |\[src/libmpg123/)")


# --------------------------------------------------------------------------
# Silencing libmpg123's direct writes to fd 2
# --------------------------------------------------------------------------

def _filtered_native_stderr():
    """Hides libmpg123's ``Note: ...`` lines printed to fd 2 while decoding."""
    return filtered_native_stderr(_DECODER_NOISE)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def _open_sound_file(path: Path) -> sf.SoundFile:
    """``sf.SoundFile`` of ``path``; a name that is not valid UTF-8 (bytes a file system holds
    but soundfile cannot pass to libsndfile) is opened through a file descriptor instead."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            return sf.SoundFile(fd, closefd=True)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    return sf.SoundFile(name)


def _check_path(path: Path) -> None:
    """Raises AudioDecodeError unless ``path`` is a non-empty regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioDecodeError(f"{path}: audio file does not exist") from None
    except OSError as e:
        raise AudioDecodeError(f"{path}: cannot access file ({e.strerror or e})") from None
    if path.is_dir():
        raise AudioDecodeError(f"{path}: is a directory, not an audio file")
    if st.st_size == 0:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")


def _decoder_reason(err: Exception) -> str:
    """A short, one-line reason from a soundfile/libsndfile exception."""
    reason = getattr(err, "error_string", None) or str(err)
    reason = " ".join(str(reason).split()).rstrip(".")
    # libsndfile reports an MP3 stream in which libmpg123 finds no frame as
    # "File does not exist or is not a regular file": misleading, as the
    # file exists (checked before opening).
    if "does not exist or is not a regular file" in reason:
        reason = "no decodable audio stream found"
    return reason or type(err).__name__


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Reads all of ``path`` block by block into float32 mono.

    Args:
        path: An existing, non-empty file.

    Returns:
        ``(audio, rate)``: ``audio`` float32 of shape ``(n_samples,)`` (may be
        empty), ``rate`` the file's sample rate in Hz.
    """
    blocks: list[np.ndarray] = []
    stopped_early: str | None = None
    with _filtered_native_stderr():
        try:
            f = _open_sound_file(path)
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
            raise AudioDecodeError(
                f"{path}: not a recognised audio file or corrupt ({_decoder_reason(e)})"
            ) from None
        rate = int(f.samplerate)
        try:
            # The header's frame count is not trusted: some MP3s state more
            # frames than they hold, and reading or seeking to the stated end
            # fails. Read sequentially until an empty block instead.
            while True:
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                blocks.append(block[:, 0] if block.shape[1] == 1 else block.mean(axis=1))
        except Exception as e:  # noqa: BLE001 - any decoder failure mid-stream
            n = sum(b.shape[0] for b in blocks)
            if n == 0:
                raise AudioDecodeError(
                    f"{path}: decoding failed ({_decoder_reason(e)})"
                ) from None
            stopped_early = (
                f"{path}: decoding stopped after {n / rate:.2f} s "
                f"({_decoder_reason(e)}); keeping the audio decoded so far"
            )
        finally:
            with contextlib.suppress(Exception):
                f.close()
    if stopped_early is not None:
        warnings.warn(stopped_early, stacklevel=3)
    if not blocks:
        return np.zeros(0, dtype=np.float32), rate
    audio = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return np.ascontiguousarray(audio, dtype=np.float32), rate


def load_audio(path: str | os.PathLike, sample_rate_hz: int | None = None) -> tuple[np.ndarray, int]:
    """Decodes an audio file into a float32 mono signal.

    Reads WAV (8/16/24/32-bit integer or float), FLAC, Ogg Vorbis/Opus and
    MP3. Multi-channel audio is down-mixed by averaging the channels. The file
    is read sequentially until the decoder returns nothing, so files whose
    header states a wrong length are read as far as they really go; if the
    decoder fails part-way, the audio decoded up to that point is kept and a
    warning is issued.

    Args:
        path: The audio file.
        sample_rate_hz: Target sample rate in Hz. When given and different from
            the file's rate, the signal is resampled with soxr (quality "HQ").
            A warning is issued when the file's rate is well below the target
            (the upper band is then empty). ``None`` keeps the file's rate.

    Returns:
        ``(audio, rate)``: ``audio`` is float32 of shape ``(n_samples,)`` with
        values in [-1, 1] (a signal whose peak exceeds 1, e.g. from a float
        WAV or codec overshoot, is scaled down by its peak, not clipped);
        ``rate`` is its sample rate in Hz.

    Raises:
        AudioDecodeError: The path does not exist, is a directory or an empty
            file, is not a recognised or is a corrupt audio file, decodes to
            zero samples, or holds NaN or infinite samples.
    """
    path = Path(path)
    if sample_rate_hz is not None:
        if isinstance(sample_rate_hz, bool) or int(sample_rate_hz) != sample_rate_hz or sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be a positive integer, got {sample_rate_hz!r}")
        sample_rate_hz = int(sample_rate_hz)
    _check_path(path)
    audio, rate = _decode(path)
    if audio.size == 0:
        raise AudioDecodeError(f"{path}: decoded to zero samples (no audio in the file)")
    if not np.isfinite(audio).all():
        raise AudioDecodeError(f"{path}: contains NaN or infinite sample values")

    if sample_rate_hz is not None and sample_rate_hz != rate:
        if rate < _LOW_RATE_FRACTION * sample_rate_hz:
            warnings.warn(
                f"{path}: recorded at {rate} Hz, below the target {sample_rate_hz} Hz; "
                f"content above {rate / 2000:g} kHz is missing",
                stacklevel=2,
            )
        audio = soxr.resample(audio, rate, sample_rate_hz, quality="HQ").astype(np.float32, copy=False)
        rate = sample_rate_hz
        if audio.size == 0:
            raise AudioDecodeError(f"{path}: decoded to zero samples after resampling")

    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:
        audio = audio / np.float32(peak)
    return audio, rate


def iter_audio(path: str | os.PathLike, sample_rate_hz: int, clip: bool = True) -> Iterator[np.ndarray]:
    """Decodes an audio file block by block: float32 mono blocks at ``sample_rate_hz``.

    The streaming counterpart of :func:`load_audio` for long recordings: memory stays
    bounded by one block whatever the file's length. Same formats, down-mixing,
    sequential reading and errors; resampling uses soxr's streaming resampler (quality
    "HQ"), which gives the same signal as :func:`load_audio`'s one-shot call up to
    rounding. Blocks are read with the same size as :func:`load_audio` reads (a damaged
    MP3's error concealment depends on it), so both decode identical samples. Unlike :func:`load_audio`, a signal whose peak exceeds 1 (float WAV) is
    clipped to [-1, 1] instead of scaled by its peak, which is only known at the end
    (``clip=False`` leaves it as decoded, for a caller that scales it afterwards).

    Raises:
        AudioDecodeError: as :func:`load_audio`, raised before the first block or, for
            NaN/infinite samples, when the bad block is reached.
    """
    path = Path(path)
    _check_path(path)
    with _filtered_native_stderr():
        try:
            f = _open_sound_file(path)
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
            raise AudioDecodeError(f"{path}: not a recognised audio file or corrupt ({_decoder_reason(e)})") from None
    rate = int(f.samplerate)
    if rate < _LOW_RATE_FRACTION * sample_rate_hz:
        warnings.warn(f"{path}: recorded at {rate} Hz, below the target {sample_rate_hz} Hz; "
                      f"content above {rate / 2000:g} kHz is missing", stacklevel=2)
    stream = soxr.ResampleStream(rate, sample_rate_hz, 1, dtype="float32", quality="HQ") if rate != sample_rate_hz \
        else None
    n_read = 0
    try:
        while True:
            try:
                with _filtered_native_stderr():
                    block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001 - any decoder failure mid-stream
                if n_read == 0:
                    raise AudioDecodeError(f"{path}: decoding failed ({_decoder_reason(e)})") from None
                warnings.warn(f"{path}: decoding stopped after {n_read / rate:.2f} s ({_decoder_reason(e)}); "
                              "keeping the audio decoded so far", stacklevel=2)
                block = np.zeros((0, 1), np.float32)
            last = block.shape[0] == 0
            mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
            n_read += mono.shape[0]
            if not np.isfinite(mono).all():
                raise AudioDecodeError(f"{path}: contains NaN or infinite sample values")
            out = stream.resample_chunk(mono, last=last) if stream is not None else mono
            if out.size:
                out = np.ascontiguousarray(out, dtype=np.float32)
                yield np.clip(out, -1.0, 1.0, out=out) if clip else out
            if last:
                break
    finally:
        with contextlib.suppress(Exception):
            f.close()
    if n_read == 0:
        raise AudioDecodeError(f"{path}: decoded to zero samples (no audio in the file)")


# --------------------------------------------------------------------------
# 16-bit WAV
# --------------------------------------------------------------------------


def write_wav16(path: str | os.PathLike, audio: np.ndarray, sample_rate_hz: int) -> Path:
    """Writes a mono 16-bit PCM WAV file atomically.

    The file has the canonical 44-byte RIFF header (``tf.audio.decode_wav``
    reads it). It is written to a temporary file in the same folder and then
    renamed over ``path``, so an interrupted write never leaves a partial file
    under ``path``. The parent folder must exist.

    Args:
        path: Output file.
        audio: float samples of shape ``(n_samples,)`` (or ``(n_samples, 1)``),
            nominally in [-1, 1]. If the peak exceeds 1.0 the whole signal is
            scaled down by the peak (no clipping).
        sample_rate_hz: Sample rate in Hz stored in the header.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``audio`` is not mono, is empty or holds NaN/inf, or the
            sample rate is not a positive integer.
    """
    path = Path(path)
    x = np.asarray(audio)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"write_wav16 expects mono audio of shape (n_samples,), got {x.shape}")
    if x.size == 0:
        raise ValueError("write_wav16: audio is empty")
    if isinstance(sample_rate_hz, bool) or int(sample_rate_hz) != sample_rate_hz or not 0 < sample_rate_hz < 2**32:
        raise ValueError(f"sample_rate_hz must be a positive integer, got {sample_rate_hz!r}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("write_wav16: audio holds NaN or infinite values")
    peak = float(np.max(np.abs(x)))
    scale = 32767.0 / peak if peak > 1.0 else 32767.0
    pcm = np.rint(x * scale).astype("<i2")

    data = pcm.tobytes()
    rate = int(sample_rate_hz)
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(data), b"WAVE",
        b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
        b"data", len(data),
    )
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


class WavHeader(NamedTuple):
    """Fields of a RIFF/WAVE header (see :func:`read_wav_header`)."""

    format_tag: int  #: 1 = integer PCM, 3 = IEEE float.
    channels: int
    sample_rate_hz: int
    bits_per_sample: int
    n_frames: int  #: samples per channel in the data chunk.
    data_offset: int  #: byte offset of the first sample.
    data_bytes: int


def read_wav_header(path: str | os.PathLike) -> WavHeader | None:
    """Parses a RIFF/WAVE header without reading the samples.

    Args:
        path: A file.

    Returns:
        The header fields, or ``None`` when the file is not a readable RIFF
        WAVE file with ``fmt `` and ``data`` chunks, or its data chunk runs past
        the end of the file (a truncated file).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            fmt = None
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, clen = struct.unpack("<4sI", f.read(8))
                if cid == b"fmt ":
                    body = f.read(min(clen, 40))
                    if len(body) < 16:
                        return None
                    tag, ch, rate, _, block, bits = struct.unpack("<HHIIHH", body[:16])
                    if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE
                        tag = struct.unpack("<H", body[24:26])[0]
                    fmt = (tag, ch, rate, bits, block)
                elif cid == b"data":
                    if fmt is None or fmt[4] == 0 or pos + 8 + clen > size:
                        return None
                    tag, ch, rate, bits, block = fmt
                    return WavHeader(tag, ch, rate, bits, clen // block, pos + 8, clen)
                pos += 8 + clen + (clen & 1)
    except OSError:
        return None
    return None


def header_frames(path: str | os.PathLike) -> tuple[int, int]:
    """``(frames, sample rate)`` as the file's header states them (cheap; may be wrong for
    MP3s, see :func:`audio_duration_s`). libmpg123's chatter while opening is filtered.

    Raises:
        soundfile.SoundFileError, RuntimeError: the file cannot be opened.
    """
    with _filtered_native_stderr(), _open_sound_file(Path(path)) as f:
        return int(f.frames), int(f.samplerate)


def audio_duration_s(path: str | os.PathLike) -> float:
    """Duration of an audio file in seconds.

    Cheap for PCM WAV files (the header is parsed; no samples are read). For
    other formats the file is decoded sequentially at its own rate, since
    compressed-file headers may state a wrong length.

    Args:
        path: An audio file.

    Returns:
        Duration in seconds.

    Raises:
        AudioDecodeError: The file cannot be read (see :func:`load_audio`).
    """
    header = read_wav_header(path)
    if header is not None and header.sample_rate_hz > 0 and header.n_frames > 0:
        return header.n_frames / header.sample_rate_hz
    path = Path(path)
    _check_path(path)
    audio, rate = _decode(path)
    if audio.size == 0:
        raise AudioDecodeError(f"{path}: decoded to zero samples (no audio in the file)")
    return audio.size / rate
