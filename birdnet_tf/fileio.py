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


