"""``train.strategy=multi_worker``: two worker processes on loopback train a run, a killed worker resumes.

One test, two launches of two ``birdnet-tf train`` processes (TF_CONFIG naming free loopback
ports): the first is killed after its first epoch, the relaunch resumes and stops early in the
same epoch on both workers. Every wait has a timeout; the processes are killed on any failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from conftest import run_cli, tiny_set_args

ROOT = Path(__file__).resolve().parents[1]

# 4 epochs of 1 step; val_top5 of 3 classes is always 1.0, so it never improves after epoch 1 and
# a patience of 2 stops the run after epoch 3 (the early stop must reach both workers)
SETTINGS = ["train.epochs=4", "train.steps_per_epoch=1", "train.monitor=val_top5", "train.early_stopping_patience=2"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def launch(data: Path, run: Path, work: Path, ports: list[int]) -> list[tuple[subprocess.Popen, Path, Path]]:
    """Both workers of the cluster: ``(process, log file, TMPDIR)`` each."""
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for i in range(len(ports)):
        tmp, log = work / f"tmp{i}", work / f"worker{i}.log"
        tmp.mkdir(parents=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), "CUDA_VISIBLE_DEVICES": "",
               "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
               "TF_NUM_INTEROP_THREADS": "1",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "birdnet_tf.cli", "train", "--data", str(data), "--out",
                                     str(run), "--strategy", "multi_worker", "--no-eval", "--workers", "1",
                                     *tiny_set_args(SETTINGS)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=ROOT)
        workers.append((proc, log, tmp))
    return workers


def logs(workers) -> str:
    return "\n".join(f"--- worker {i}:\n{log.read_text()[-2500:]}" for i, (_, log, _) in enumerate(workers))


def stop(workers) -> None:
    for proc, _, _ in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc, _, _ in workers:
        proc.wait(timeout=30)


def epoch_written(state: Path) -> int:
    try:
        return int(json.loads(state.read_text()).get("epoch", 0))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_two_workers_train_resume_after_a_kill_and_stop_early_together(tmp_path, synthetic_dataset):
    from birdnet_tf.models.objects import load_model

    data = tmp_path / "prepared"  # prepared once: workers preparing the same cache at once would clash
    rc, _, err = run_cli(["prepare", str(synthetic_dataset(files_per_class=3)), "--out", str(data), "--workers", "1", "--no-progress"])
    assert rc == 0, err
    run = tmp_path / "run"

    # first launch: killed (worker 1, then the chief) once both have saved epoch 1, the chief into the
    # run folder, the other worker into its temporary folder
    first = launch(data, run, tmp_path / "first", free_ports(2))
    try:
        deadline = time.time() + 180
        while epoch_written(run / "state.json") < 1 or not any(
                epoch_written(p) for p in (tmp_path / "first" / "tmp1").glob("birdnet-tf-worker1-*/state.json")):
            assert time.time() < deadline, "no epoch finished in 180 s\n" + logs(first)
            assert all(p.poll() is None for p, _, _ in first), "a worker exited early\n" + logs(first)
            time.sleep(0.1)
        first[1][0].send_signal(signal.SIGKILL)
    finally:
        stop(first)
    killed_after = epoch_written(run / "state.json")
    assert 1 <= killed_after < 3, logs(first)
    scratch = list((tmp_path / "first" / "tmp1").glob("birdnet-tf-worker1-*"))  # left behind by the kill
    assert len(scratch) == 1 and (scratch[0] / "checkpoints" / "epoch_001.weights.h5").is_file(), logs(first)

    # relaunch with the same command: both resume after the last finished epoch and stop early together
    second = launch(data, run, tmp_path / "second", free_ports(2))
    try:
        for proc, _, _ in second:
            proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        raise AssertionError("the relaunched workers did not finish in 240 s\n" + logs(second)) from None
    finally:
        stop(second)
    assert all(p.returncode == 0 for p, _, _ in second), logs(second)
    chief_log, worker_log = (log.read_text() for _, log, _ in second)
    assert f"epochs {killed_after + 1}..4" in chief_log and f"epochs {killed_after + 1}..4" in worker_log
    for text in (chief_log, worker_log):  # the same decision in the same epoch on both workers
        assert "early stopping: no improvement of val_top5 for 2 epochs" in text, logs(second)
        assert "epoch 3/4" in text and "epoch 4/4" not in text, logs(second)
    # the logged epoch (loss all-reduced, validation broadcast from the chief) is the same on both
    assert [l for l in chief_log.splitlines() if l.startswith("epoch 3/4")][0].split("s - ")[1] == \
           [l for l in worker_log.splitlines() if l.startswith("epoch 3/4")][0].split("s - ")[1]

    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 3 and state["stopped_early"] and state["best_epoch"] == 1
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0, 1, 2]
    assert {p.name for p in run.iterdir()} == {"config.json", "labels.txt", "split.csv", "history.csv",
                                               "state.json", "best.keras", "checkpoints", "logs"}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["epoch_001.weights.h5", "epoch_002.weights.h5", "epoch_003.weights.h5", "last.keras"]
    assert not list((tmp_path / "second" / "tmp1").glob("birdnet-tf-worker1-*"))  # deleted at the end
    model = load_model(run / "best.keras")
    assert model.count_params() > 0
