"""Ensembles (weights fitted on validation predictions) and the multi-worker training job queue."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdnet_tf.errors import BirdnetError
from birdnet_tf.evaluate.metrics import evaluate_scores
from birdnet_tf.infer.ensemble import (
    MemberPredictions, Objective, Targets, align, combine, load_targets, read_member, search_weights,
)
from birdnet_tf.train.queue import read_jobs
from conftest import run_cli

LABELS = ["a", "b", "c", "d", "e", "f"]


# ---------------------------------------------------------------- hand-made tables
def test_combine_aligns_files_and_labels_and_normalises_weights():
    rng = np.random.default_rng(0)
    sa, sb = rng.random((3, 3)), rng.random((3, 3))
    a = MemberPredictions("A", ["x.wav", "y.wav", "z.wav"], ["p", "q", "r"], sa)
    # B lists the files and labels in another order
    b = MemberPredictions("B", ["z.wav", "x.wav", "y.wav"], ["r", "p", "q"], sb[[2, 0, 1]][:, [2, 0, 1]])
    out = combine([a, b], [1, 3])
    assert out.files == ["x.wav", "y.wav", "z.wav"] and out.labels == ["p", "q", "r"]
    np.testing.assert_allclose(out.scores, 0.25 * sa + 0.75 * sb)
    np.testing.assert_allclose(combine(np.stack([sa, sb])), (sa + sb) / 2)  # default uniform
    with pytest.raises(BirdnetError, match="all zero"):
        combine(np.stack([sa, sb]), [0, 0])
    with pytest.raises(BirdnetError, match=r"3 weight\(s\) for 2 model"):
        combine(np.stack([sa, sb]), [1, 1, 1])


def test_alignment_errors_list_missing_files_and_labels():
    s = np.ones((2, 3))
    a = MemberPredictions("A", ["x.wav", "y.wav"], ["p", "q", "r"], s)
    with pytest.raises(BirdnetError, match=r"B: lacks predictions for 1 of the 2 file\(s\) of A: y.wav"):
        align([a, MemberPredictions("B", ["x.wav", "w.wav"], ["p", "q", "r"], s)])
    with pytest.raises(BirdnetError, match=r"B: labels differ from A's: lacks label\(s\) r; has label\(s\) s"):
        align([a, MemberPredictions("B", ["x.wav", "y.wav"], ["p", "q", "s"], s)])
    with pytest.raises(BirdnetError, match="given twice"):
        align([a, a])
    targets = Targets("split.csv", ["audio/x.ogg", "audio/y.ogg", "audio/v.ogg"], ["p", "q", "r"],
                      [[], [], []], ["", "", ""], np.full(3, np.nan), [["audio/x.ogg"], ["audio/y.ogg"],
                                                                       ["audio/v.ogg"]])
    with pytest.raises(BirdnetError, match=r"lacks predictions for 1 of the 3 file\(s\) of split.csv: "
                                           r"audio/v.ogg"):
        align([MemberPredictions("A", ["/data/audio/x.ogg", "/data/audio/y.ogg"], ["p", "q", "r"], s)], targets)
    # a predict table on the dataset (absolute paths) and one on the prepared WAVs both match the keys
    m1 = MemberPredictions("P", ["/data/audio/v.ogg", "/data/audio/x.ogg", "/data/audio/y.ogg"], ["p", "q", "r"],
                np.arange(9.0).reshape(3, 3))
    m2 = MemberPredictions("W", ["/cache/audio/y.wav", "/cache/audio/x.wav", "/cache/audio/v.wav"], ["r", "q", "p"],
                np.arange(9.0).reshape(3, 3))
    al = align([m1, m2], targets)
    assert al.files == targets.keys
    np.testing.assert_array_equal(al.stack[0], [[3, 4, 5], [6, 7, 8], [0, 1, 2]])
    np.testing.assert_array_equal(al.stack[1], [[5, 4, 3], [2, 1, 0], [8, 7, 6]])


def test_read_member_rejects_per_window_tables(tmp_path):
    path = tmp_path / "w.csv"
    pd.DataFrame({"file": ["x.wav", "x.wav"], "start_s": [0, 3], "end_s": [3, 6], "p": [0.1, 0.2]}).to_csv(path)
    with pytest.raises(BirdnetError, match="several rows"):
        read_member(path)
    with pytest.raises(BirdnetError, match="not found"):
        read_member(tmp_path / "nope.csv")


def _half_and_half(n_files: int = 80, seed: int = 0):
    """Model A knows the first half of the files, B the second half, C is noise."""
    rng = np.random.default_rng(seed)
    primary = rng.integers(0, len(LABELS), n_files)
    background = rng.random((n_files, len(LABELS))) < 0.1

    def model(good):
        s = 0.5 * rng.random((n_files, len(LABELS)))
        s[good, primary[good]] += 0.6
        return s

    half = np.arange(n_files) < n_files // 2
    return np.stack([model(half), model(~half), rng.random((n_files, len(LABELS)))]), primary, background


def test_objective_equals_evaluate_scores():
    stack, primary, background = _half_and_half()
    scores = stack[0].copy()
    scores[:5] = 0.25  # ties are pessimistic in both
    m = evaluate_scores(scores, primary, background)
    assert Objective(primary, background, len(LABELS))(scores) == pytest.approx(m["mrr"] + m["map_bg"])


def test_greedy_finds_the_mixture_of_the_two_half_experts():
    stack, primary, background = _half_and_half()
    objective = Objective(primary, background, len(LABELS))
    singles = [objective(s) for s in stack]
    result = search_weights(stack, primary, background, method="greedy", steps=10)
    np.testing.assert_allclose(result.weights, [0.5, 0.5, 0.0])
    assert result.counts == [1, 1, 0]
    assert result.value == pytest.approx(objective(combine(stack, result.weights)))
    assert result.value > max(singles) + 0.2
    assert result.path[0] == pytest.approx(max(singles))


@pytest.mark.parametrize("method", ["random", "optuna"])
def test_random_and_optuna_improve_over_uniform(method):
    if method == "optuna":
        pytest.importorskip("optuna")
    stack, primary, background = _half_and_half()
    objective = Objective(primary, background, len(LABELS))
    uniform = objective(combine(stack))
    result = search_weights(stack, primary, background, method=method, trials=40, seed=3)
    assert result.trials == 40
    assert result.value > uniform + 0.1
    assert result.weights[2] < 0.2 and min(result.weights[:2]) > 0.25
    assert result.value == pytest.approx(objective(combine(stack, result.weights)))
    again = search_weights(stack, primary, background, method=method, trials=40, seed=3)
    np.testing.assert_allclose(again.weights, result.weights)  # seeded


# ---------------------------------------------------------------- CLI on a trained run
def test_cli_ensemble_end_to_end(trained_synthetic, tmp_path):
    run = trained_synthetic.run
    scores_csv = run / "eval" / "scores.csv"
    if not scores_csv.is_file():
        assert run_cli(["evaluate", str(run)])[0] == 0
    targets = load_targets(run)
    base = pd.read_csv(scores_csv)
    assert sorted(base["file"]) == sorted(targets.keys)
    labels = [c for c in base.columns if c != "file"]
    # a predict-style table of a "second model": absolute paths, reversed rows and labels, flipped scores
    rng = np.random.default_rng(1)
    other = pd.DataFrame({"file": [str(trained_synthetic.data / k) for k in base["file"]], "start_s": 0.0,
                          "end_s": 2.0})
    for label in labels[::-1]:
        other[label] = rng.random(len(base))
    pred_csv = tmp_path / "other.csv"
    other.iloc[::-1].to_csv(pred_csv, index=False)

    out = tmp_path / "ens"
    rc, stdout, err = run_cli(["ensemble", str(scores_csv), str(pred_csv), "--targets", str(run),
                               "--out", str(out), "--method", "greedy"])
    assert rc == 0, err
    for title in ("MAP", "MAP-bg", "top-1", "cmAP", "MLRAP", "ensemble"):
        assert title in stdout
    doc = json.loads((out / "weights.json").read_text())
    assert doc["method"] == "greedy" and doc["objective"] == "map+map_bg"
    assert set(doc["weights"]) == {str(scores_csv), str(pred_csv)}
    assert sum(doc["weights"].values()) == pytest.approx(1.0)
    assert doc["n_files"] == len(targets.keys)
    ens = doc["metrics"]["ensemble"]
    assert doc["value"] == pytest.approx(ens["mrr"] + ens["map_bg"])
    best_single = max(m["mrr"] + m["map_bg"] for k, m in doc["metrics"].items() if k != "ensemble")
    assert doc["value"] >= best_single - 1e-12

    from birdnet_tf.infer.outputs import read_score_table

    table, table_labels = read_score_table(out / "ensemble.csv")
    assert table_labels == labels and sorted(table["file"]) == sorted(targets.keys)

    rc, _, err = run_cli(["ensemble", str(scores_csv), str(pred_csv), "--targets", str(run), "--out", str(out)])
    assert rc == 2 and "already exists" in err
    # saved weights applied to (here: the same) predictions of the same models
    rc, stdout, err = run_cli(["ensemble", str(scores_csv), str(pred_csv), "--weights", str(out / "weights.json"),
                               "--out", str(tmp_path / "applied")])
    assert rc == 0, err
    applied = pd.read_csv(tmp_path / "applied" / "ensemble.csv")
    np.testing.assert_allclose(applied.set_index("file").loc[table["file"], labels].to_numpy(),
                               table[labels].to_numpy(), atol=2e-6)

    # an export is scored on the target files (their prepared audio) and aligned by path
    rc, stdout, err = run_cli(["ensemble", str(trained_synthetic.export), str(pred_csv), "--targets", str(run),
                               "--out", str(tmp_path / "with_export"), "--method", "random", "--trials", "20"])
    assert rc == 0, err + stdout
    doc = json.loads((tmp_path / "with_export" / "weights.json").read_text())
    assert doc["trials"] == 20 and doc["n_files"] == len(targets.keys)

    rc, _, err = run_cli(["ensemble", str(scores_csv), "--targets", str(tmp_path / "nowhere"), "--out",
                          str(tmp_path / "x")])
    assert rc == 2 and "nowhere" in err


# ---------------------------------------------------------------- queue
def _py(code: str) -> str:
    return f"command: {sys.executable} -c \"{code}\""


def test_read_jobs_text_and_yaml(tmp_path):
    text = tmp_path / "jobs.txt"
    text.write_text("# comment\n\nxc-a --data d --set train.epochs=2\nprobe " + _py("print(1)") + "\n")
    jobs = read_jobs(text)
    assert [j.name for j in jobs] == ["xc-a", "probe"]
    argv = jobs[0].argv(tmp_path / "w")
    assert argv[-7:] == ["train", "--data", "d", "--set", "train.epochs=2", "--out", str(tmp_path / "w/xc-a/run")]
    assert jobs[1].argv(tmp_path) == [sys.executable, "-c", "print(1)"]
    yml = tmp_path / "jobs.yaml"
    yml.write_text("- {name: a, args: [--data, d, --out, runs/a]}\n- {name: b, command: echo hi}\n")
    jobs = read_jobs(yml)
    assert jobs[0].argv(tmp_path)[-4:] == ["--data", "d", "--out", "runs/a"] and jobs[1].command == ("echo", "hi")
    text.write_text("a --data x\na --data y\n")
    with pytest.raises(BirdnetError, match="repeats"):
        read_jobs(text)
    text.write_text("../evil --data x\n")
    with pytest.raises(BirdnetError, match="job name"):
        read_jobs(text)


def test_two_workers_run_each_job_exactly_once(tmp_path):
    record = tmp_path / "record.txt"
    jobs = tmp_path / "jobs.txt"
    code = ("import os,sys,time; f=open(sys.argv[1],'a'); f.write(sys.argv[2]+' '+str(os.getpid())+chr(10)); "
            "f.close(); time.sleep(0.4)")
    jobs.write_text("".join(f"job{i} command: {sys.executable} -c \"{code}\" {record} job{i}\n" for i in range(4)))
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "birdnet_tf.cli", "queue", str(jobs), "--workdir", str(work),
           "--heartbeat-s", "0.2", "--stale-after-s", "30"]
    workers = [subprocess.Popen([*cmd, "--gpu", str(g)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for g in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    names = sorted(line.split()[0] for line in record.read_text().splitlines())
    assert names == ["job0", "job1", "job2", "job3"]
    for i in range(4):
        done = json.loads((work / f"job{i}" / "done").read_text())
        assert done["rc"] == 0 and done["gpu"] in ("0", "1")
        assert not (work / f"job{i}" / "lock").exists()
        assert "attempt 1" in (work / f"job{i}" / "train.log").read_text()
    # a further worker finds nothing to do
    rc, stdout, _ = run_cli(["queue", str(jobs), "--workdir", str(work)])
    assert rc == 0 and "ran 0 job(s)" in stdout


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_is_taken_over_and_live_lock_is_respected(tmp_path):
    jobs = tmp_path / "jobs.txt"
    marker = tmp_path / "ran_{}.txt"
    jobs.write_text("".join(f"{n} " + _py(f"open(r'{str(marker).format(n)}', 'w').write('x')") + "\n"
                            for n in ("stale", "live")))
    work = tmp_path / "work"
    for name, pid, age_s in (("stale", _dead_pid(), 3600.0), ("live", os.getpid(), 0.0)):
        (work / name).mkdir(parents=True)
        now = time.time()
        (work / name / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                                      "started": now - age_s, "heartbeat": now - age_s}))
    rc, stdout, err = run_cli(["queue", str(jobs), "--workdir", str(work), "--heartbeat-s", "0.2",
                               "--stale-after-s", "60"])
    assert rc == 0, err
    assert "taking over stale" in stdout
    assert Path(str(marker).format("stale")).is_file() and (work / "stale" / "done").is_file()
    assert not Path(str(marker).format("live")).exists() and not (work / "live" / "done").exists()
    assert "1 running elsewhere (live)" in stdout
    assert not list((work / "stale").glob("lock*"))  # the stale lock was moved aside and removed


def test_failing_job_is_retried_then_marked_failed(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("bad " + _py("import sys; print('boom'); sys.exit(3)") + "\ngood " + _py("print('fine')") + "\n")
    work = tmp_path / "work"
    rc, stdout, err = run_cli(["queue", str(jobs), "--workdir", str(work), "--retries", "1"])
    assert rc == 1, err
    failed = json.loads((work / "bad" / "failed").read_text())
    assert failed["rc"] == 3 and failed["attempt"] == 2 and "boom" in failed["log_tail"]
    log = (work / "bad" / "train.log").read_text()
    assert log.count("=== birdnet-tf queue: bad attempt") == 2 and log.splitlines().count("boom") == 2
    assert (work / "good" / "done").is_file()
    assert "bad: failed with exit status 3" in stdout
    rc, stdout, _ = run_cli(["queue", str(jobs), "--workdir", str(work)])  # not run again
    assert rc == 0 and "ran 0 job(s)" in stdout
    assert (work / "bad" / "train.log").read_text().count("attempt") == 2
