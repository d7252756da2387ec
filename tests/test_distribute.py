"""Distribution strategies (``train.strategy``): two logical CPU devices equal one device, TF_CONFIG checks.

The strategy runs start a fresh Python process: logical devices and collective ops can only be
configured before TensorFlow initialises, which the test process may already have done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from birdnet_tf.errors import ConfigError
from birdnet_tf.train.distribute import read_tf_config

ROOT = Path(__file__).resolve().parents[1]

# no BatchNormalization, frontend.band_norm included (Keras normalises each replica's batch on its own), no dropout and no
# augmentation (random per replica): what is left must not depend on how the batch is split
EXACT = ["model.name=kahl2018_baseline", "model.batch_norm=false", "frontend.band_norm=false", "model.dropout=0", "augment.gain_prob=0",
         "augment.noise_prob=0", "augment.mask_prob=0", "train.steps_per_epoch=3", "train.optimizer=sgd",
         "train.schedule=constant", "train.learning_rate=0.01"]

SCRIPT = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from birdnet_tf.config import Config
    from birdnet_tf.runs import read_state
    from birdnet_tf.train import loop
    from birdnet_tf.train.sources import example_source
    from birdnet_tf.train.trainer import train
    settings, data, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    # the same model, optimizer and loss the trainer builds, on fixed batches of 8: the training
    # examples' random excerpt positions are drawn differently inside a distributed dataset
    rng = np.random.default_rng(0)
    weights = {}
    for name, batch in (("one_device", 8), ("mirrored", 4)):  # the same global batch of 8
        cfg = Config().replace([*settings, f"train.strategy={name}", f"data.batch_size={batch}"])
        x = rng.normal(size=(24, cfg.excerpt_samples)).astype("float32") * 0.1 if not weights else x
        y = np.eye(3, dtype="float32")[np.arange(24) % 3]
        keras.utils.set_random_seed(1)
        with loop.strategy_scope(cfg):
            model, fit_model, _ = loop.prepare_model(cfg, None, example_source(cfg, data), 3, 3, False)
        fit_model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0, shuffle=False)
        weights[name] = model.get_weights()
    # the multi_worker loop's step (custom_loop.train_function) under the same strategy: per-replica batches
    # of 4 from distribute_datasets_from_function (one pipeline: each step's two replicas take the next two)
    from birdnet_tf.train.custom_loop import train_function
    strategy = loop.distribution_strategy(cfg)
    halves = lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(ctx.get_per_replica_batch_size(8))
    keras.utils.set_random_seed(1)
    with loop.strategy_scope(cfg):
        model, fit_model, _ = loop.prepare_model(cfg, None, example_source(cfg, data), 3, 3, False)
    step, batches = train_function(fit_model, strategy), iter(strategy.distribute_datasets_from_function(halves))
    for _ in range(3):
        step(batches)
    weights["custom"] = model.get_weights()
    # a distiller (its own compute_loss) under both strategies: its loss must be divided by the replicas
    # as Keras' losses are, or mirrored gradients come out twice as large
    from birdnet_tf.distill.teachers import make_distiller
    for name, batch in (("one_device", 8), ("mirrored", 4)):
        cfg = Config().replace([*settings, f"train.strategy={name}", f"data.batch_size={batch}"])
        keras.utils.set_random_seed(1)
        with loop.strategy_scope(cfg):
            model, _, _ = loop.prepare_model(cfg, None, example_source(cfg, data), 3, 3, False)
            distiller = make_distiller(model, [], 0, np.ones(0, np.float32), 0.5, "softmax", cfg.audio.sample_rate_hz)
            distiller.compile(optimizer=keras.optimizers.SGD(0.01))
        distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0, shuffle=False)
        weights["distill_" + name] = model.get_weights()
    distill = max(float(np.max(np.abs(a - b))) for a, b in zip(weights["distill_one_device"],
                                                                weights["distill_mirrored"]))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights["one_device"], weights["mirrored"]))
    custom = max(float(np.max(np.abs(a - b))) for a, b in zip(weights["one_device"], weights["custom"]))
    moved = max(float(np.max(np.abs(a))) for a in weights["one_device"])
    # and the whole trainer under the strategy: 2 replicas × 4 = a global batch of 8
    cfg = Config().replace([*settings, "train.strategy=mirrored", "data.batch_size=4"])
    summary = train(cfg, data, f"{out}/run", evaluate=False, log=lambda *a: None)
    print(json.dumps({"max_abs_diff": diff, "custom_loop_diff": custom, "max_abs_weight": moved, "distill_diff": distill,
                      "epochs": read_state(f"{out}/run/state.json")["epoch"]}))
""")


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_mirrored_on_two_logical_cpus_equals_one_device(tmp_path, synthetic_dataset, tiny_settings):
    """Three SGD steps at a global batch of 8: mirrored (2 replicas × 4) equals one device (1 × 8)
    within 1e-5 (float32 sums in another order), with Keras' fit, with the multi_worker loop's
    step and with a distiller (its own loss); the trainer runs an epoch under the strategy."""
    data = synthetic_dataset(files_per_class=3)
    proc = run_script(SCRIPT, json.dumps([*tiny_settings, *EXACT]), str(data), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["max_abs_weight"] > 0
    assert result["max_abs_diff"] < 1e-5 and result["custom_loop_diff"] < 1e-5, result
    assert result["distill_diff"] < 1e-5, result
    assert result["epochs"] == 1 and (tmp_path / "run" / "best.keras").is_file()


@pytest.mark.parametrize("raw, message", [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'with a "cluster" object'),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2 is out of range: the cluster has 2 worker(s)"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', '"host:port"'),
])
def test_bad_tf_config_is_refused_clearly(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_tf_config({"TF_CONFIG": raw})


def test_tf_config_chief_counts_as_worker_zero():
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    assert read_tf_config({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})}) \
        == {"workers": ["h0:1", "h1:1", "h2:1"], "index": 2}
    assert read_tf_config({}) is None


def test_unknown_strategy_is_refused(tiny_config):
    from birdnet_tf.train.distribute import resolve

    with pytest.raises(ConfigError, match="train.strategy must be one of"):
        resolve(tiny_config.replace(["train.strategy=tpu"]))



MIXED = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from birdnet_tf.config import Config
    from birdnet_tf.train import loop
    from birdnet_tf.train.callbacks import PlateauDecay
    from birdnet_tf.train.sources import example_source
    settings, data = json.loads(sys.argv[1]), sys.argv[2]
    keras.utils.set_random_seed(0)  # the same initial weights every run
    keras.mixed_precision.set_global_policy("mixed_float16")  # what configure_precision sets on a GPU
    cfg = Config().replace([*settings, "train.strategy=mirrored", "train.schedule=plateau",
                            "train.warmup_epochs=1", "frontend.frontend_lr_scale=0.1"])
    with loop.strategy_scope(cfg):
        model, fit_model, _ = loop.prepare_model(cfg, None, example_source(cfg, data), 3, 3, False)
    x = np.random.default_rng(0).normal(size=(24, cfg.excerpt_samples)).astype("float32") * 0.1
    y = np.eye(3, dtype="float32")[np.arange(24) % 3]
    plateau = PlateauDecay("loss", 1, 0.5, 1, cfg.train.learning_rate, 0.0, 3, {})
    hist = fit_model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0,
                         callbacks=[plateau])
    # the multi_worker loop's step (custom_loop.train_function) on a second model: loss scaling too
    from birdnet_tf.train.custom_loop import train_function
    strategy = loop.distribution_strategy(cfg)
    keras.utils.set_random_seed(0)
    with loop.strategy_scope(cfg):
        second, second_fit, _ = loop.prepare_model(cfg, None, example_source(cfg, data), 3, 3, False)
    step = train_function(second_fit, strategy)
    batches = iter(strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()))
    hooks = keras.callbacks.CallbackList([PlateauDecay("loss", 1, 0.5, 1, cfg.train.learning_rate, 0.0, 3, {})],
                                         model=second_fit)
    custom = []
    for i in range(6):
        hooks.on_train_batch_begin(i)
        custom.append(float(step(batches)))
    print(json.dumps({"optimizer": type(model.optimizer).__name__, "loss": hist.history["loss"],
                      "compute": sorted({l.compute_dtype for l in model.layers}),
                      "custom_optimizer": type(second.optimizer).__name__, "custom_loss": custom}))
""")


def test_mixed_precision_under_a_strategy_trains(synthetic_dataset, tiny_settings):
    """mixed_float16 + MirroredStrategy + the frontend learning-rate multiplier + the plateau
    schedule: Keras wraps the optimizer in a LossScaleOptimizer and the loss stays finite, under
    ``fit`` and under the multi_worker loop's step."""
    import math

    data = synthetic_dataset(files_per_class=1)
    proc = run_script(MIXED, json.dumps(tiny_settings), str(data))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["optimizer"] == "LossScaleOptimizer"
    assert "float16" in result["compute"]  # the convolutions; the frontend and output stay float32
    # loss scaling skips a step whose float16 gradients overflow; training goes on to finite losses
    assert math.isfinite(result["loss"][-1]), result["loss"]
    assert result["custom_optimizer"] == "LossScaleOptimizer" and math.isfinite(result["custom_loss"][-1]), result


def test_cli_strategy_multi_worker_without_tf_config(tmp_path, synthetic_dataset, monkeypatch):
    from conftest import run_cli

    monkeypatch.delenv("TF_CONFIG", raising=False)
    rc, out, err = run_cli(["train", "--data", str(synthetic_dataset(files_per_class=1)), "--out", str(tmp_path / "run"),
                            "--strategy", "multi_worker"])
    assert rc != 0 and "needs the TF_CONFIG environment variable" in err
    assert not (tmp_path / "run").exists()


def test_per_worker_rows_share_out_files_and_metadata_rows():
    import numpy as np
    import pandas as pd

    from birdnet_tf.train.distribute import per_worker_rows

    rows, meta = pd.DataFrame({"key": list("abcde")}), np.arange(10).reshape(5, 2)
    shares = [per_worker_rows(rows, i, 2) for i in range(2)]
    assert [list(s["key"]) for s in shares] == [["a", "c", "e"], ["b", "d"]]
    assert per_worker_rows(meta, 1, 2).tolist() == [[2, 3], [6, 7]]  # the same rows as the files'
    assert per_worker_rows(rows, 0, 1) is rows


def test_another_worker_resumes_only_after_the_chief_finished_an_epoch(tmp_path, tiny_config):
    from birdnet_tf.config import save_config
    from birdnet_tf.runs import RunPaths
    from birdnet_tf.train.distribute import Distribution
    from birdnet_tf.train.trainer import run_to_resume

    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    save_config(tiny_config, paths.config)
    (paths.root / "split.csv.part").write_text("")  # the chief's first files, half written
    chief, other = Distribution(None, "multi_worker", 0, 2), Distribution(None, "multi_worker", 1, 2)
    assert run_to_resume(paths, tiny_config, chief) and not run_to_resume(paths, tiny_config, other)
    paths.state.write_text(json.dumps({"epoch": 1}))
    assert run_to_resume(paths, tiny_config, other)
    with pytest.raises(ConfigError, match="different config"):  # and it checks the config as the chief does
        run_to_resume(paths, tiny_config.replace(["train.epochs=9"]), other)
