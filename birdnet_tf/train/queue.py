"""``birdnet-tf queue``: share a list of training jobs between processes, GPUs and machines.

The OFAI 2018 system trained 37 networks by starting its training script once per GPU on
every server that saw a shared (NFS) folder; lock files made sure each run was trained
once. This is the same for ``birdnet-tf train``:

* a **jobs file** lists the jobs, either as text, one job a line::

      # name   birdnet-tf train arguments
      xc-a     --data data/xc --set train.seed=1
      xc-b     --data data/xc --config pipelines/kahl2018_baseline.yaml
      probe    command: python -c "print('any command')"

  or as a YAML list of ``{name, args}`` / ``{name, command}`` mappings (``args`` and
  ``command`` a string or a list). A job runs ``birdnet-tf train ARGS`` (``--out
  WORKDIR/<name>/run`` added when ARGS has no ``--out``), or with ``command:`` any
  command (split like a shell line; run without a shell);
* **workers** (:func:`run_worker`, one per GPU: ``--gpu ID`` sets
  ``CUDA_VISIBLE_DEVICES`` for its jobs) walk the list and take the first job that is
  neither finished nor taken: a job is taken by creating ``WORKDIR/<name>/lock`` with
  ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+). The lock holds the host, pid, start time
  and a heartbeat timestamp that a thread rewrites every ``heartbeat_s``;
* a lock whose heartbeat is older than ``stale_after_s`` (or whose pid is dead on this
  host) belongs to a crashed worker: it is renamed aside (only one worker's rename can
  succeed) and the job taken over. ``train`` resumes after its last finished epoch, so
  the job continues where it stopped. A worker that finds its own lock gone (taken over
  while it was stalled) stops its job;
* a job that exits with status 0 gets ``WORKDIR/<name>/done``; one that fails is run
  again up to ``retries`` more times, then gets ``WORKDIR/<name>/failed`` with its exit
  status and the end of its log, and is not run again (remove the marker to retry);
* the job's output goes to ``WORKDIR/<name>/train.log`` (appended, one header per attempt).

All markers are JSON, written atomically. Nothing happens at import.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import write_json_atomic

LOCK = "lock"
DONE = "done"
FAILED = "failed"
ATTEMPTS = "attempts.json"
LOG = "train.log"

DEFAULT_HEARTBEAT_S = 30.0
"""How often a worker refreshes the heartbeat of its lock."""

DEFAULT_STALE_AFTER_S = 300.0
"""Age of a heartbeat after which the lock is taken over (well above ``heartbeat_s``)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOG_TAIL_CHARS = 2000

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Job:
    """One entry of a jobs file.

    Attributes:
        name: Folder name of the job under the work folder.
        args: ``birdnet-tf train`` arguments, or None for a ``command`` job.
        command: The command of a ``command:`` job, or None.
        line: Where it was defined (for messages).
    """

    name: str
    args: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    line: str = ""

    def argv(self, workdir: Path) -> list[str]:
        """The command line to run (``--out`` added to train jobs without one)."""
        if self.command is not None:
            return list(self.command)
        args = list(self.args or ())
        if not any(a == "--out" or a.startswith("--out=") for a in args):
            args += ["--out", str(workdir / self.name / "run")]
        return [sys.executable, "-m", "birdnet_tf.cli", "train", *args]


def _split(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as e:
            raise BirdnetError(f"{where}: cannot split {value!r}: {e}") from None
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    raise BirdnetError(f"{where}: expected a string or a list of strings, got {value!r}")


def _parse_text(text: str, source: Path) -> list[Job]:
    jobs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        name, _, rest = line.partition(" ")
        if "\t" in name:
            name, _, more = name.partition("\t")
            rest = more + " " + rest
        rest = rest.strip()
        if rest.startswith("command:"):
            command = _split(rest[len("command:"):].strip(), where)
            if not command:
                raise BirdnetError(f"{where}: job {name!r} has an empty command")
            jobs.append(Job(name, command=command, line=where))
        else:
            jobs.append(Job(name, args=_split(rest, where), line=where))
    return jobs


def _parse_yaml(doc, source: Path) -> list[Job]:
    if not isinstance(doc, list):
        raise BirdnetError(f"{source}: a YAML jobs file must be a list of {{name, args}} or {{name, command}}")
    jobs = []
    for i, item in enumerate(doc, start=1):
        where = f"{source}: job {i}"
        if not isinstance(item, dict) or "name" not in item or ("args" in item) == ("command" in item):
            raise BirdnetError(f"{where}: needs 'name' and exactly one of 'args' or 'command', got {item!r}")
        unknown = sorted(set(item) - {"name", "args", "command"})
        if unknown:
            raise BirdnetError(f"{where}: unknown key(s) {', '.join(unknown)} (use name, args or command)")
        name = str(item["name"])
        if "command" in item:
            command = _split(item["command"], where)
            if not command:
                raise BirdnetError(f"{where}: job {name!r} has an empty command")
            jobs.append(Job(name, command=command, line=where))
        else:
            jobs.append(Job(name, args=_split(item["args"] or [], where), line=where))
    return jobs


def read_jobs(path: PathLike) -> list[Job]:
    """Reads a jobs file (text lines, or a YAML list for ``.yaml`` / ``.yml``).

    Raises:
        BirdnetError: missing or unreadable file, no jobs, a bad or repeated name,
            or a malformed entry (named with its line).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BirdnetError(f"{p}: jobs file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BirdnetError(f"{p}: cannot read jobs file: {e}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            jobs = _parse_yaml(yaml.safe_load(text), p)
        except yaml.YAMLError as e:
            raise BirdnetError(f"{p}: not valid YAML: {e}") from None
    else:
        jobs = _parse_text(text, p)
    if not jobs:
        raise BirdnetError(f"{p}: lists no jobs")
    seen: dict[str, str] = {}
    for job in jobs:
        if not _NAME.match(job.name) or job.name in (".", ".."):
            raise BirdnetError(f"{job.line}: job name {job.name!r} must be letters, digits, '.', '_' or '-'")
        if job.name in seen:
            raise BirdnetError(f"{job.line}: job name {job.name!r} repeats {seen[job.name]}")
        seen[job.name] = job.line
    return jobs


# --------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(path: Path) -> dict | None:
    """The lock's JSON, or None when it is gone or (being) written."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def lock_is_stale(path: Path, stale_after_s: float, now: float | None = None) -> bool:
    """Whether the lock at ``path`` belongs to a worker that is gone.

    Stale: its heartbeat (or, while unreadable, the file's mtime) is older than
    ``stale_after_s``, or it was taken on this host by a pid that no longer exists.
    """
    now = time.time() if now is None else now
    info = read_lock(path)
    if info is None:
        try:
            return now - path.stat().st_mtime > stale_after_s
        except FileNotFoundError:
            return False
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
            and not _pid_alive(info["pid"]):
        return True
    return now - float(info.get("heartbeat", 0.0)) > stale_after_s


class Lock:
    """A job's lock file, held by this process, with a heartbeat thread.

    Use :meth:`acquire`; then :meth:`start_heartbeat`, :attr:`lost`, :meth:`release`.
    """

    def __init__(self, path: Path, fd: int, info: dict):
        self.path, self.fd, self.info = path, fd, info
        self.inode = os.fstat(fd).st_ino
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, path: Path, extra: dict | None = None) -> Lock | None:
        """Creates the lock file atomically; None if it exists."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        now = time.time()
        info = {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(8),
                "started": now, "heartbeat": now, **(extra or {})}
        lock = cls(path, fd, info)
        lock._write()
        return lock

    def _write(self) -> None:
        data = (json.dumps(self.info) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def still_ours(self) -> bool:
        """Whether the lock path is still this lock's file (not renamed aside by a takeover)."""
        try:
            return os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def beat(self) -> None:
        """Refreshes the heartbeat (and notices a lost lock)."""
        if not self.still_ours():
            self.lost.set()
            return
        self.info["heartbeat"] = time.time()
        self._write()

    def start_heartbeat(self, interval_s: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.beat()
                except OSError:
                    pass
                if self.lost.is_set():
                    return

        self._thread = threading.Thread(target=loop, name=f"heartbeat {self.path}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if it is still this lock's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.still_ours():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)


def take_over(path: Path, stale_after_s: float, log: Callable[[str], None]) -> bool:
    """Moves a stale lock aside atomically; True if this worker did (and may now create its own).

    The stale file is renamed to a unique name: of several workers doing this at once,
    one rename succeeds. If what was renamed turns out not to be stale (a fresh lock
    created meanwhile), it is put back with a hard link (which fails rather than
    overwrite a lock created in between).
    """
    if not lock_is_stale(path, stale_after_s):
        return False
    aside = path.with_name(f"{path.name}.stale.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if not lock_is_stale(aside, stale_after_s):  # someone else took over first: give theirs back
        with contextlib.suppress(FileExistsError, FileNotFoundError):
            os.link(aside, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
        return False
    info = read_lock(aside) or {}
    log(f"taking over {path.parent.name}: lock of {info.get('host', '?')} pid {info.get('pid', '?')} is stale "
        f"(heartbeat {time.time() - float(info.get('heartbeat', 0)):.0f} s ago)")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)
    return True


# --------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------

def job_state(workdir: Path, job: Job) -> str:
    """``done``, ``failed``, ``locked`` or ``free``."""
    folder = workdir / job.name
    if (folder / DONE).exists():
        return "done"
    if (folder / FAILED).exists():
        return "failed"
    if (folder / LOCK).exists():
        return "locked"
    return "free"


def _attempts(folder: Path) -> int:
    try:
        return int(json.loads((folder / ATTEMPTS).read_text())["failures"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _LOG_TAIL_CHARS))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _run(job: Job, workdir: Path, lock: Lock, gpu: str | None, attempt: int, poll_s: float,
         log: Callable[[str], None]) -> int | None:
    """Runs the job's command with its output appended to the log; its exit status, None if the lock was lost."""
    folder = workdir / job.name
    argv = job.argv(workdir)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    with open(folder / LOG, "a", encoding="utf-8") as fh:
        fh.write(f"=== birdnet-tf queue: {job.name} attempt {attempt} on {socket.gethostname()} pid {os.getpid()}"
                 f"{'' if gpu is None else f' gpu {gpu}'} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{shlex.join(argv)}\n")
        fh.flush()
        try:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        except OSError as e:
            fh.write(f"cannot start: {e}\n")
            return 127
        try:
            while True:
                try:
                    return proc.wait(timeout=poll_s)
                except subprocess.TimeoutExpired:
                    pass
                if lock.lost.is_set():
                    log(f"{job.name}: lock was taken over by another worker; stopping this run")
                    _stop(proc)
                    fh.write("=== stopped: the lock was taken over by another worker\n")
                    return None
        except BaseException:  # KeyboardInterrupt / SIGTERM: stop the job; the next worker resumes it
            _stop(proc)
            fh.write("=== interrupted\n")
            raise


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_worker(jobs_file: PathLike, workdir: PathLike, gpu: str | None = None, once: bool = False,
               retries: int = 0, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
               stale_after_s: float = DEFAULT_STALE_AFTER_S, wait: bool = False, poll_s: float = 1.0,
               log: Callable[[str], None] | None = None) -> dict:
    """Takes and runs jobs of ``jobs_file`` until none is left to take.

    Args:
        jobs_file: See :func:`read_jobs`; re-read before each job, so jobs can be added.
        workdir: The shared folder (``<name>/`` per job: lock, markers, ``train.log``).
        gpu: Value of ``CUDA_VISIBLE_DEVICES`` for this worker's jobs (start one worker per GPU).
        once: Run at most one job.
        retries: How many times a failed job is run again before it is marked failed.
        heartbeat_s: Heartbeat interval.
        stale_after_s: Heartbeat age after which another worker's lock is taken over.
        wait: When every remaining job is locked by another worker, keep polling
            (to take over crashed ones) until all are done or failed, instead of returning.
        poll_s: How often the running job and the lock are checked.
        log: Where progress goes (default: stdout).

    Returns:
        ``{"ran": [...], "done": [...], "failed": [...], "busy": [...]}``: jobs this worker
        ran, that ended done/failed here, and that were locked by others when it stopped.
    """
    log = log or (lambda msg: print(msg, flush=True))
    if stale_after_s <= heartbeat_s:
        raise BirdnetError(f"--stale-after-s ({stale_after_s:g}) must exceed --heartbeat-s ({heartbeat_s:g})")
    if retries < 0:
        raise BirdnetError("--retries must be >= 0")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, list[str]] = {"ran": [], "done": [], "failed": [], "busy": []}
    saved = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops the job and frees its lock
        saved = signal.signal(signal.SIGTERM, _terminate)
    try:
        _work(jobs_file, workdir, gpu, once, retries, heartbeat_s, stale_after_s, wait, poll_s, log, summary)
    finally:
        if saved is not None:
            signal.signal(signal.SIGTERM, saved)
    return summary


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _work(jobs_file, workdir: Path, gpu, once, retries, heartbeat_s, stale_after_s, wait, poll_s, log,
          summary: dict) -> None:
    while True:
        jobs = read_jobs(jobs_file)
        busy, started = [], False
        for job in jobs:
            state = job_state(workdir, job)
            if state in ("done", "failed"):
                continue
            folder = workdir / job.name
            folder.mkdir(parents=True, exist_ok=True)
            lock = Lock.acquire(folder / LOCK, {"job": job.name, "gpu": gpu})
            if lock is None and take_over(folder / LOCK, stale_after_s, log):
                lock = Lock.acquire(folder / LOCK, {"job": job.name, "gpu": gpu})
            if lock is None:
                busy.append(job.name)
                continue
            try:
                if job_state(workdir, job) != "locked":  # finished by another worker since the check
                    continue
                lock.start_heartbeat(heartbeat_s)
                attempt = _attempts(folder) + 1
                log(f"{job.name}: running (attempt {attempt}{'' if gpu is None else f', gpu {gpu}'}); "
                    f"log {folder / LOG}")
                t0 = time.time()
                rc = _run(job, workdir, lock, gpu, attempt, poll_s, log)
                started = True
                summary["ran"].append(job.name)
                if rc is None:
                    continue
                record = {"job": job.name, "rc": rc, "host": socket.gethostname(), "pid": os.getpid(),
                          "gpu": gpu, "attempt": attempt, "started": t0, "finished": time.time(),
                          "wall_s": round(time.time() - t0, 3), "log": str(folder / LOG)}
                if rc == 0:
                    write_json_atomic(folder / DONE, record)
                    summary["done"].append(job.name)
                    log(f"{job.name}: done in {record['wall_s']:.0f} s")
                else:
                    write_json_atomic(folder / ATTEMPTS, {"failures": attempt})
                    if attempt > retries:
                        write_json_atomic(folder / FAILED, {**record, "log_tail": _log_tail(folder / LOG)})
                        summary["failed"].append(job.name)
                        log(f"{job.name}: failed with exit status {rc} (attempt {attempt}; not retried); "
                            f"see {folder / LOG}")
                    else:
                        log(f"{job.name}: failed with exit status {rc} (attempt {attempt} of {retries + 1}); "
                            "will be retried")
            finally:
                lock.release()
            break  # re-read the jobs file and start again from the top
        if once and started:
            break
        if not started:
            if busy and wait:
                time.sleep(poll_s)
                continue
            summary["busy"] = busy
            break


def format_summary(summary: dict) -> str:
    """One line: what this worker ran, finished, failed and left to others."""
    parts = [f"ran {len(summary['ran'])} job(s)", f"{len(summary['done'])} done", f"{len(summary['failed'])} failed"]
    if summary["failed"]:
        parts[-1] += f" ({', '.join(summary['failed'])})"
    if summary["busy"]:
        parts.append(f"{len(summary['busy'])} running elsewhere ({', '.join(summary['busy'])})")
    return "queue: " + ", ".join(parts)
