"""birdnet-tf tune: search spaces, recordist folds, a resumable local search, a distributed one.

The searches train tiny models on short synthetic recordings (one epoch per trial); the
distributed one runs a chief and two workers as separate processes on loopback.
"""

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
import soundfile as sf
import yaml

from conftest import SYNTH_CLASSES, SYNTH_RATE_HZ, run_cli, synth_signal, tiny_set_args

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError, ConfigError
from birdnet_tf.tune.folds import assign_folds
from birdnet_tf.tune.search import SearchSettings, check_search_folder, set_distributed_env
from birdnet_tf.tune.space import load_space, parse_space

REPO = Path(__file__).resolve().parents[1]
SPACE = {"train.learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}, "model.width": [0.25, 0.5]}


def write_recordist_dataset(root: Path, recordists=("Ann", "Bob", "Cy"), seed: int = 0) -> Path:
    """A metadata.csv dataset: every recordist has one 2-s synthetic recording of every class."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    rows = []
    for r in recordists:
        for kind in SYNTH_CLASSES:
            name = f"audio/{kind}_{r}.wav"
            sf.write(root / name, synth_signal(kind, 2.0, SYNTH_RATE_HZ, rng), SYNTH_RATE_HZ, subtype="PCM_16")
            rows.append({"filename": name, "primary_label": kind, "recordist": r})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def write_space(path: Path, space: dict = SPACE) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


# ----------------------------------------------------------------------------- spaces (no training)


def test_space_parsing_ranges_log_conditions_and_bad_inputs(tmp_path):
    import keras_tuner as kt

    space = parse_space({
        "train.learning_rate": {"min": "1e-4", "max": 1e-2, "log": True},
        "data.excerpt_s": {"min": 2, "max": 4, "step": 0.5},
        "model.dense_units": {"min": 16, "max": 64, "step": 16},
        "model.name": ["ismir2016", "kahl2018_resnet"],
        "model.resnet_n": {"min": 1, "max": 3, "when": {"model.name": "kahl2018_resnet"}},
        "model.batch_norm": "bool",
        "augment.noise_snr_db": [[3, 30], [10, 40]],
    })
    by = {p.key: p for p in space.params}
    assert (by["train.learning_rate"].kind, by["train.learning_rate"].log) == ("float", True)
    assert by["data.excerpt_s"].kind == "float" and by["data.excerpt_s"].step == 0.5
    assert by["model.dense_units"].kind == "int"  # an int setting gives an int range
    assert by["model.resnet_n"].when == {"model.name": ("kahl2018_resnet",)}
    assert by["augment.noise_snr_db"].values == ("3.0,30.0", "10.0,40.0")  # tuples as strings the config parses
    hp = kt.HyperParameters()
    space.declare(hp)
    assert hp.values["model.name"] == "ismir2016" and not hp.is_active("model.resnet_n")  # the condition holds
    hp.values["model.name"] = "kahl2018_resnet"
    assert hp.is_active("model.resnet_n")
    trial_values = {"augment.noise_snr_db": "10.0,40.0", "model.resnet_n": 3, "tuner/epochs": 2}
    cfg = Config().replace(space.overrides(trial_values))
    assert cfg.augment.noise_snr_db == (10.0, 40.0) and cfg.model.resnet_n == 3

    def refused(spec, *words):
        with pytest.raises(ConfigError) as e:
            parse_space(spec)
        assert all(w in str(e.value) for w in words), str(e.value)

    # an unknown key gets the message --set gives
    with pytest.raises(ConfigError) as set_error:
        Config().replace(["model.widht=1"], "space")
    refused({"model.widht": [1, 2]}, str(set_error.value))
    refused({"train.learning_rate": {"min": 0.01, "max": 0.01}}, "empty range")
    refused({"train.learning_rate": {"min": 0.0, "max": 0.1, "log": True}}, "min > 0")
    refused({"model.dense_units": {"min": 16, "max": 64.5}}, "whole numbers")
    refused({"model.name": []}, "non-empty")
    refused({"model.dense_units": ["many"]}, "model.dense_units", "not a valid int")
    refused({"model.resnet_n": {"min": 1, "max": 2, "when": {"model.name": "kahl2018_resnet"}}}, "condition")
    refused({"train.epochs": {"min": 1, "max": 3, "grid": 1}}, "unknown field")
    (tmp_path / "bad.yaml").write_text("train.learning_rate: [1e-3, 3e-3\n")
    with pytest.raises(ConfigError, match="bad.yaml: cannot parse"):
        load_space(tmp_path / "bad.yaml")


def test_folds_are_grouped_by_recordist():
    rows = [{"key": f"{c}_{r}_{i}", "primary_label": c, "recordist": r}
            for r in ("Ann", "Bob", "Cy", "Dee", "Eve") for c in ("a", "b") for i in range(1 + (r == "Bob"))]
    rows += [{"key": "c_only", "primary_label": "c", "recordist": "Solo"},  # the only recordist of class c
             {"key": "c_only2", "primary_label": "c", "recordist": " solo "},
             {"key": "anon", "primary_label": "a", "recordist": ""}]
    folds = assign_folds(pd.DataFrame(rows), 3, seed=1)
    assert set(folds["fold"]) == {-1, 0, 1, 2}
    norm = folds["recordist"].fillna("").str.strip().str.casefold()
    for f in range(3):  # no recordist on both sides of any fold
        val, train = set(norm[folds["fold"] == f]), set(norm[folds["fold"] != f])
        assert not (val & train) - {""}
        assert {"a", "b"} <= set(folds.loc[folds["fold"] != f, "primary_label"])  # every class keeps training files
    assert set(folds.loc[norm == "solo", "fold"]) == {-1}  # never validated: class c would have no training file
    assert folds.equals(assign_folds(pd.DataFrame(rows), 3, seed=1))  # deterministic
    with pytest.raises(BirdnetError, match="use fewer --folds"):
        assign_folds(pd.DataFrame(rows[:4]), 3)


def test_search_folder_and_distributed_settings_are_checked(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    base = Config().replace(["train.epochs=1"])
    settings = SearchSettings(recipe=base, space=parse_space(SPACE), data_dir=data, out_dir=tmp_path / "tune")
    assert check_search_folder(settings) is False and check_search_folder(settings) is True
    settings.space = parse_space({**SPACE, "model.width": [0.25, 1.0]})
    with pytest.raises(ConfigError,
                       match=r"holds another search \(space.model.width.values: \[0.25, 0.5\] -> \[0.25, 1.0\]"):
        check_search_folder(settings)
    settings.space, settings.recipe = parse_space(SPACE), base.replace(["train.epochs=2"])
    with pytest.raises(ConfigError, match=r"recipe.train.epochs: 1 -> 2"):
        check_search_folder(settings)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    settings.out_dir = tmp_path / "other"
    with pytest.raises(ConfigError, match="no tune.json"):
        check_search_folder(settings)
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.setenv(name, "")  # so that teardown restores what was there (set_distributed_env sets them)
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        set_distributed_env("localhost", None)
    with pytest.raises(ConfigError, match="needs --chief"):
        set_distributed_env(None, "w1")
    set_distributed_env("127.0.0.1:8123", "w1")
    assert (os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_TUNER_ID"]) == ("127.0.0.1", "w1")


# ----------------------------------------------------------------------------- searches (tiny training)


def test_search_with_recordist_folds_resumes_an_interrupted_trial_and_its_best_recipe_trains(tmp_path, monkeypatch):
    from birdnet_tf.train import trainer

    data = write_recordist_dataset(tmp_path / "data")
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "tune"
    argv = ["tune", "--space", str(space), "--data", str(data), "--out", str(out), "--max-trials", "1",
            "--folds", "2", "--workers", "1", *tiny_set_args()]
    real_train, calls = trainer.train, []

    def interrupted_in_second_fold(*args, **kwargs):  # trial 0: fold 0 trains, then Ctrl-C as fold 1 starts
        calls.append(Path(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trainer, "train", interrupted_in_second_fold)
    rc, stdout, stderr = run_cli(argv)
    assert rc == 130 and "run the same command again" in stderr, stdout[-2000:] + stderr[-2000:]
    kept = out / "runs" / "trial_0" / "fold_0" / "state.json"
    mtime = kept.stat().st_mtime_ns
    assert not (out / "runs" / "trial_0" / "fold_1" / "state.json").exists()
    assert json.loads((out / "oracle" / "oracle.json").read_text())["ongoing_trials"] == {"tuner0": "0"}

    monkeypatch.setattr(trainer, "train", real_train)
    rc, stdout, stderr = run_cli(argv)
    assert rc == 0, stdout[-3000:] + stderr[-3000:]
    assert "training already finished" in stdout  # the interrupted trial is redone: its finished fold is kept
    assert kept.stat().st_mtime_ns == mtime, "a finished run was trained again"
    table = pd.read_csv(out / "trials.csv")
    assert list(table["trial"]) == [0] and set(table["status"]) == {"COMPLETED"}
    folds = table[["val_mlrap_bg_fold0", "val_mlrap_bg_fold1"]].to_numpy()
    assert np.allclose(table["val_mlrap_bg"], folds.mean(axis=1))
    assert np.allclose(table["val_mlrap_bg_std"], folds.std(axis=1))
    for run in out.glob("runs/trial_*/fold_*"):  # each fold run validates on recordists it never trained on
        split = pd.read_csv(run / "split.csv")
        assert not set(split.loc[split["split"] == "val", "recordist"]) & set(split.loc[split["split"] == "train",
                                                                                         "recordist"])
        assert len(pd.read_csv(run / "history.csv")) == 1
    assert (out / "trials.png").stat().st_size > 0
    hparams = out / "logs" / "hparams"  # the HParams view: its columns once, one record per finished trial
    assert len(list(hparams.glob("events.out.tfevents.*"))) == 1 and len(list(hparams.glob("trial_*/events.*"))) == 1
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"]["width"] == table["model.width"][0]
    assert best["train"]["learning_rate"] == pytest.approx(table["train.learning_rate"][0])

    rc, stdout, stderr = run_cli(["train", "--config", str(out / "best.yaml"), "--data", str(data),
                                  "--out", str(tmp_path / "best_run"), "--no-eval"])
    assert rc == 0, stdout[-2000:] + stderr[-2000:]
    # another space in the same folder is refused, naming the difference
    other = write_space(tmp_path / "other.yaml", {**SPACE, "model.width": [0.25, 1.0]})
    rc, _, stderr = run_cli([*argv[:2], str(other), *argv[3:]])
    assert rc == 2 and "holds another search" in stderr and "model.width" in stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_on_loopback_run_every_trial_once_and_a_killed_worker_resumes(tmp_path):
    from birdnet_tf.data.dataset import prepare_dataset

    data = tmp_path / "prepared"  # prepared first: two workers on one machine must not prepare at once
    prepare_dataset(write_recordist_dataset(tmp_path / "raw"), data, Config().audio.sample_rate_hz, workers=1,
                    progress=False, log=lambda *_: None)
    space = write_space(tmp_path / "space.yaml")
    out, port = tmp_path / "tune", _free_port()
    base = [sys.executable, "-m", "birdnet_tf.cli", "tune", "--space", str(space), "--data", str(data),
            "--out", str(out), "--max-trials", "2", "--workers", "1", *tiny_set_args(["train.epochs=3"]),
            "--chief", f"127.0.0.1:{port}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    procs, logs = {}, {}

    def start(name: str, *extra: str) -> None:
        logs[name] = tmp_path / f"{name}.log"
        procs[name] = subprocess.Popen([*base, *extra], cwd=tmp_path, env=env, stdout=logs[name].open("w"),
                                       stderr=subprocess.STDOUT, text=True)

    def wait_for(predicate, what: str, limit_s: float = 120) -> None:
        t0 = time.time()
        while not predicate():
            assert time.time() - t0 < limit_s, f"timed out waiting for {what}: " + \
                "\n".join(f"{n}: {p.read_text()[-1500:]}" for n, p in logs.items())
            assert all(p.poll() in (None, 0) for p in procs.values()), "a process failed early"
            time.sleep(0.3)

    def started(name: str) -> list[str]:
        return [line.split()[1] for line in logs[name].read_text().splitlines()
                if line.startswith("trial ") and f" on {name}:" in line]

    try:
        start("chief")
        wait_for(lambda: (out / "tune.json").is_file(), "the chief")
        start("w0", "--worker", "w0")
        start("w1", "--worker", "w1")
        # kill w0 (SIGKILL) once its trial has finished epoch 1 of 3, then start it again with the same ID
        wait_for(lambda: started("w0"), "w0's trial")
        state = out / "runs" / f"trial_{started('w0')[0]}" / "state.json"
        wait_for(lambda: state.is_file() and json.loads(state.read_text()).get("epoch", 0) >= 1, "w0's epoch 1")
        procs["w0"].kill()
        procs["w0"].wait(timeout=30)
        done = json.loads(state.read_text())["epoch"]
        assert done < 3, "w0 finished its trial before it could be killed"
        first = logs["w0"].read_text()
        start("w0", "--worker", "w0")
        for name in ("w0", "w1", "chief"):
            procs[name].wait(timeout=180)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    text = {name: path.read_text() for name, path in logs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name} exited with {p.returncode}:\n{text[name][-3000:]}"
    trial = state.parent.name.split("_")[1]
    assert started("w0") == [trial] and f"resuming {state.parent} after epoch {done}" in text["w0"]  # taken up again
    assert f"epochs {done + 1}..3" in text["w0"] and "epochs 1..3" in first
    ids = started("w0") + started("w1")
    assert sorted(ids) == ["0", "1"], ids  # every trial exactly once, over both workers
    table = pd.read_csv(out / "trials.csv")  # written by the chief
    assert len(table) == 2 and set(table["status"]) == {"COMPLETED"}
    for t in range(2):
        assert list(pd.read_csv(out / "runs" / f"trial_{t}" / "history.csv")["epoch"]) == [0, 1, 2]
    assert json.loads((out / "tune.json").read_text())["folds"] == 1
