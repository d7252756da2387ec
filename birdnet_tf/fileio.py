"""Small file-system helpers shared by every stage: atomic writes and native-stderr filtering.

Every file birdnet-tf writes goes through a temporary file beside its target that is
renamed over it (``os.replace``), so an interrupted job never leaves half a file, and
gets the usual permissions (0o666 minus the umask).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_file_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """Creates a new, hidden temporary file in ``path``'s folder.

    Unlike :func:`tempfile.mkstemp` the file gets the usual permissions
    (0o666 minus the umask), so the file renamed over ``path`` later is
    readable like any other.

    Returns:
        ``(fd, temp_path)``: an open write-only descriptor and the file's path.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it over ``path`` if the block succeeds.

    The temporary file exists (empty) when the block starts; on an exception it is removed.
    ``suffix`` ends the temporary name, for writers that insist on one (Keras: ``.keras``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------
# Filtering what native libraries print straight to file descriptor 2
# --------------------------------------------------------------------------

_stderr_lock = threading.Lock()
_stderr_depth = 0
_stderr_saved_fd: int | None = None
_stderr_capture = None  # a binary temporary file while redirected


@contextlib.contextmanager
def filtered_native_stderr(noise: re.Pattern) -> Iterator[None]:
    """Hides lines matching ``noise`` that native libraries print straight to fd 2.

    File descriptor 2 is pointed at a temporary file for the duration of the
    block; on exit it is restored and every captured line that is not decoder
    chatter is written back to the real stderr, so nothing else is lost (at
    worst delayed). Nested and concurrent (threaded) use share one redirection.
    If anything about the redirection fails, decoding proceeds unfiltered.
    """
    global _stderr_depth, _stderr_saved_fd, _stderr_capture
    with _stderr_lock:
        redirected = _stderr_depth > 0
        if not redirected:
            capture = saved = None
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
                capture = tempfile.TemporaryFile()
                saved = os.dup(2)
                os.dup2(capture.fileno(), 2)
                redirected = True
            except (OSError, ValueError, AttributeError):
                if saved is not None:
                    os.close(saved)
                if capture is not None:
                    capture.close()
            else:
                _stderr_saved_fd, _stderr_capture = saved, capture
        if redirected:
            _stderr_depth += 1
    if not redirected:
        yield
        return
    try:
        yield
    finally:
        with _stderr_lock:
            _stderr_depth -= 1
            if _stderr_depth == 0 and _stderr_saved_fd is not None:
                saved, capture = _stderr_saved_fd, _stderr_capture
                _stderr_saved_fd, _stderr_capture = None, None
                try:
                    if sys.stderr is not None:
                        sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                try:
                    capture.seek(0)
                    kept = [
                        line
                        for line in capture.read().splitlines(keepends=True)
                        if not noise.match(line)
                    ]
                    if kept:
                        os.write(2, b"".join(kept))
                except OSError:
                    pass
                finally:
                    capture.close()




#: What TensorFlow prints to fd 2 on every start of a machine without a GPU (absl's
#: pre-init banner, CPU-feature and oneDNN notices, the CUDA probes).
TF_NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog|To enable the following instructions"
                      rb"|[IWE]\d{4} [\d:. ]+\d+ (cuda_\w+|cudart_stub|cpu_feature_guard|port)\.cc)")


def quiet_tensorflow() -> None:
    """Imports TensorFlow without its CPU-only start-up chatter (real errors still show).

    Used by the CLI and by worker processes that import TensorFlow themselves."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    with filtered_native_stderr(TF_NOISE):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe prints here


# --------------------------------------------------------------------------
# Stray temporary files of killed writers
# --------------------------------------------------------------------------

_PART_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.part(\..*)?$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_parts(*folders: str | os.PathLike) -> list[Path]:
    """Removes the temporary files (:func:`temp_file_beside`) that killed writers left in ``folders``.

    Only names of the form ``.NAME.PID.HEX.part[SUFFIX]`` whose process is gone are
    removed (a writer that is still running keeps its file). Returns what was removed.
    """
    removed = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            m = _PART_NAME.match(entry.name)
            if not m or _pid_alive(int(m.group(1))):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    import shutil

                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


# --------------------------------------------------------------------------
# Dataset entries: names that must stay inside their dataset
# --------------------------------------------------------------------------

NAME_MAX_BYTES = 255
"""Longest file-name component most file systems accept (bytes of UTF-8)."""


def entry_problem(name: object) -> str | None:
    """Why ``name`` cannot be an entry of a dataset folder, or None when it can.

    The one rule every reader of a dataset (catalog, prepare, sort, extract) applies to a
    file name taken from a table or an XML file: it must be a non-empty relative path
    (POSIX or Windows separators) that stays inside the folder — no absolute path, no
    drive, no ``..`` component, no NUL — and each component must fit a file system
    (:data:`NAME_MAX_BYTES`). Symbolic links the user placed inside a dataset are followed.
    """
    if not isinstance(name, str) or not name.strip():
        return "empty file name"
    if "\x00" in name:
        return "file name with a NUL character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes the file system holds that are no text (os.fsdecode's surrogates)
        return "file name that is not valid UTF-8 text (rename it)"
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return "absolute path (outside the dataset)"
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        return "file name names no file"
    if ".." in parts:
        return "path with '..' (outside the dataset)"
    try:
        if any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES for p in parts):
            return f"file name component over {NAME_MAX_BYTES} bytes"
    except UnicodeError:
        return "file name that is not valid text"
    return None


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path`` lies (lexically, after normalising) inside folder ``root``."""
    root_abs = os.path.normpath(os.path.abspath(root))
    path_abs = os.path.normpath(os.path.abspath(path))
    return path_abs == root_abs or path_abs.startswith(root_abs.rstrip(os.sep) + os.sep)


# --------------------------------------------------------------------------
# What --force may replace, and replacing a folder without a gap
# --------------------------------------------------------------------------

#: Files by which a folder is recognised as written by birdnet-tf (a run, an export, a
#: prepared dataset, a chunks folder, a sorted dataset); a folder holding a subfolder
#: with one of them is a parent of outputs (``runs/``, ``models/xc/``) and is never replaced.
OUTPUT_MARKERS = ("config.json", "state.json", "saved_model.pb", ".birdnet_tf_prepared.json",
                  "assets.extra/config.json", "chunks.csv", "extract_config.json", "sort_report.json",
                  ".birdnet_tf_predictions.json", ".birdnet_tf_tflite.json")


def output_inside(out: str | os.PathLike, skip: tuple[str, ...] = ()) -> str | None:
    """The name of a subfolder of ``out`` that is itself a birdnet-tf output (it holds one
    of :data:`OUTPUT_MARKERS`), or None; subfolders named in ``skip`` are not looked at."""
    try:
        subs = list(Path(out).iterdir())
    except OSError:
        return None
    for sub in subs:
        if sub.name in skip:
            continue
        if sub.is_dir() and not sub.is_symlink() and any((sub / m).exists() for m in OUTPUT_MARKERS):
            return sub.name
    return None


def refuse_parent_of_outputs(out: str | os.PathLike, skip: tuple[str, ...] = ()) -> None:
    """Raises :class:`BirdnetError` when ``out`` holds other birdnet-tf outputs (``runs/``,
    ``models/xc/``): ``--force`` never replaces anything in such a folder."""
    from birdnet_tf.errors import BirdnetError

    sub = output_inside(out, skip)
    if sub is not None:
        raise BirdnetError(f"{out}: holds other birdnet-tf outputs (e.g. {sub}/); "
                           "--force never replaces a parent of runs or exports — choose another --out")


def check_replaceable(out: str | os.PathLike, markers: tuple[str, ...], what: str, force: bool) -> None:
    """The one rule for ``--force``: an existing, non-empty ``out`` is replaced only when
    ``force`` is given and ``out`` holds every one of ``markers`` (it is a ``what`` this
    package wrote) and no subfolder that is itself a birdnet-tf output.

    Raises:
        BirdnetError: ``out`` exists and may not be replaced; the message says why.
    """
    from birdnet_tf.errors import BirdnetError

    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise BirdnetError(f"{out}: exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    if not force:
        raise BirdnetError(f"{out}: already exists and is not empty; choose another --out or pass --force")
    # subfolders the output itself has (assets.extra) are not other outputs
    refuse_parent_of_outputs(out, tuple({m.split("/")[0] for m in markers if "/" in m}))
    missing = [m for m in markers if not (out / m).is_file()]
    if missing:
        raise BirdnetError(f"{out}: is not a {what} written by birdnet-tf (no {missing[0]}); "
                           "--force only replaces one — choose another --out")


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_folder(new: str | os.PathLike, out: str | os.PathLike) -> None:
    """Puts finished folder ``new`` at ``out``, replacing an existing ``out`` with no moment
    when neither exists (an atomic exchange on Linux; elsewhere ``out`` is first renamed to a
    backup that :func:`restore_folder` puts back if a kill lands between the two renames)."""
    import shutil

    new, out = Path(new), Path(out)
    if not out.exists():
        os.replace(new, out)
        return
    if _exchange(str(new), str(out)):
        shutil.rmtree(new, ignore_errors=True)  # now the old folder
        return
    backup = out.with_name(f".{out.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(out, backup)
    os.replace(new, out)
    shutil.rmtree(backup, ignore_errors=True)


def restore_folder(out: str | os.PathLike) -> None:
    """Undoes a :func:`replace_folder` that a kill interrupted: puts the backup back when
    ``out`` is missing, and removes a backup left beside a finished ``out``."""
    import shutil

    out = Path(out)
    backup = out.with_name(f".{out.name}.old")
    if backup.is_dir():
        if out.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(backup, out)
