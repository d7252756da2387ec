"""Fault injection: ``kill -9`` of long commands at seeded random moments, each followed by
the same command, which must finish, lose at most one epoch, leave no temporary files and
write what an uninterrupted run writes.

Bounded for a busy 2-core machine: a few kill points per command on tiny synthetic data,
every process on loopback only, each wait capped.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_set_args, write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261203


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "birdnet_tf.cli", *args]


def env(cache: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "BIRDNET_TF_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def run(argv: list[str], cache: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env(cache), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv[3:])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-2000:]}"
    return proc


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry.name))
    return kids


def kill_when(argv: list[str], cache: Path, marker, delay_s: float, timeout: float = 90,
              must_kill: bool = True) -> tuple[str, list[int]]:
    """Starts ``argv``, waits for ``marker`` (a text in its output, or a callable that turns
    true), sleeps ``delay_s`` and ``kill -9``s it. Returns the output so far and the worker
    processes it had started; fails when the command ended before the kill (no kill point)."""
    proc = subprocess.Popen(argv, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    seen, t0 = [], time.monotonic()
    try:
        if isinstance(marker, str):
            for line in proc.stdout:
                seen.append(line)
                if marker in line or time.monotonic() - t0 > timeout:
                    break
        else:
            while not marker() and proc.poll() is None and time.monotonic() - t0 < timeout:
                time.sleep(0.02)
        time.sleep(delay_s)
        kids = children_of(proc.pid)
        assert proc.poll() is None or not must_kill, f"{' '.join(argv[3:5])} ended before its kill point:\n{''.join(seen)[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    return "".join(seen), kids


def stray_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".part" in p.name or p.name.endswith(".partial") or p.name.endswith(".old")]


def wav_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.wav"))}


def test_prepare_survives_kill_9_and_leaves_no_orphan_workers(tmp_path):
    """Three seeded kill points of a two-worker prepare; each rerun completes to the same WAVs and
    metadata as an uninterrupted run, no temporary file stays, and the workers do not outlive it."""
    data = write_synthetic_dataset(tmp_path / "data", files_per_class=12)
    reference = tmp_path / "reference"
    run(cli("prepare", str(data), "--out", str(reference), "--workers", "2", "--no-progress"), tmp_path / "cache")
    rng = random.Random(SEED)
    survived = 0
    for point in range(3):
        out = tmp_path / f"killed{point}"
        _, kids = kill_when(cli("prepare", str(data), "--out", str(out), "--workers", "2", "--no-progress"),
                            tmp_path / "cache", lambda: any(out.rglob("*.part*")), rng.uniform(0.0, 0.05))
        deadline = time.monotonic() + 10
        while kids and time.monotonic() < deadline:
            kids = [k for k in kids if Path(f"/proc/{k}").exists()
                    and Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
            time.sleep(0.2)
        assert not kids, f"kill point {point}: worker processes {kids} outlived prepare"
        run(cli("prepare", str(data), "--out", str(out), "--workers", "2", "--no-progress"), tmp_path / "cache")
        assert not stray_temporaries(out), stray_temporaries(out)
        assert wav_bytes(out) == wav_bytes(reference)
        ours, theirs = pd.read_csv(out / "metadata.csv"), pd.read_csv(reference / "metadata.csv")
        pd.testing.assert_frame_equal(ours, theirs)
        survived += 1
    assert survived == 3


#: run-to-run spread of the tiny run's validation loss: two uninterrupted seeded runs differ by
#: about 0.002 (tf.data's non-deterministic maps reorder excerpts), so 0.02 is the tolerance
VAL_LOSS_TOLERANCE = 0.02


def test_train_killed_in_its_first_epoch_resumes_to_what_an_uninterrupted_run_writes(tmp_path):
    """kill -9 at a seeded moment of the first epoch (the run folder used to be broken for good:
    an empty history.csv); the same command then finishes with one history row per epoch, no
    temporary files, the files and validation figures of an uninterrupted run of the same
    command (run alongside) within the run-to-run tolerance. (A kill after a finished epoch
    loses only the running one: the interrupted-run tests of test_train_export_e2e.py.)"""
    data = write_synthetic_dataset(tmp_path / "data", files_per_class=3)
    argv = lambda out: cli("train", "--data", str(data), "--out", str(out), "--no-eval",  # noqa: E731
                           "--workers", "1", *tiny_set_args(["train.epochs=2", "train.steps_per_epoch=2"]))
    reference = subprocess.Popen(argv(tmp_path / "reference"), env=env(tmp_path / "cache-ref"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run_dir = tmp_path / "run"
        rng = random.Random(SEED + 1)
        out, _ = kill_when(argv(run_dir), tmp_path / "cache", "Epoch 1/2", rng.uniform(0.0, 0.5))
        assert "Epoch 1/2" in out, out[-2000:]
        run(argv(run_dir), tmp_path / "cache", timeout=180)
        _, err = reference.communicate(timeout=240)
        assert reference.returncode == 0, err[-2000:]
    finally:
        if reference.poll() is None:
            reference.kill()
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert pd.read_json(run_dir / "state.json", typ="series")["epoch"] == 2
    assert not stray_temporaries(run_dir), stray_temporaries(run_dir)
    ref = pd.read_csv(tmp_path / "reference" / "history.csv")
    assert list(ref.columns) == list(history.columns)
    assert (abs(history["val_loss"] - ref["val_loss"]) <= VAL_LOSS_TOLERANCE).all(), (history, ref)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())


def test_export_killed_while_writing_or_replacing_leaves_a_whole_export(trained_synthetic, tmp_path):
    """kill -9 of export --force over an earlier export at a seeded moment: the earlier export
    (or the new one) is always whole at --out, and the same command then finishes."""
    import shutil

    out = tmp_path / "export"
    shutil.copytree(trained_synthetic.export, out)
    argv = cli("export", str(trained_synthetic.run), "--out", str(out), "--force")
    rng = random.Random(SEED + 2)
    kill_when(argv, tmp_path / "cache", lambda: (tmp_path / ".export.partial").exists(), rng.uniform(0.0, 1.0))
    assert (out / "saved_model.pb").is_file() and (out / "assets.extra" / "config.json").is_file()
    run(argv, tmp_path / "cache", timeout=180)
    assert (out / "saved_model.pb").is_file()
    assert not stray_temporaries(tmp_path), stray_temporaries(tmp_path)


@pytest.mark.parametrize("fmt", ["csv"])
def test_predict_writer_killed_then_rerun_writes_the_same_table(trained_synthetic, tmp_path, fmt):
    """kill -9 of predict at a seeded moment leaves no output and no temporary file; the same
    command then writes the table an uninterrupted run writes."""
    audio = trained_synthetic.data
    reference = tmp_path / "reference.csv"
    argv = lambda out: cli("predict", str(trained_synthetic.export), str(audio),  # noqa: E731
                           "--out", str(out), "--format", fmt)
    first = subprocess.Popen(argv(reference), env=env(tmp_path / "cache"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # the uninterrupted run, alongside
    out = tmp_path / "killed.csv"
    t0 = time.monotonic()
    try:
        kill_when(argv(out), tmp_path / "cache", lambda: time.monotonic() - t0 > 1.0,
                  random.Random(SEED + 3).uniform(0.0, 4.0), must_kill=False)
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert not stray_temporaries(tmp_path)
    if out.exists():  # killed after the atomic write: then it is whole
        assert out.read_text() == reference.read_text()
        out.unlink()
    run(argv(out), tmp_path / "cache")
    assert out.read_text() == reference.read_text()
