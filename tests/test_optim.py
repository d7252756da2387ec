"""Optimisers, learning-rate schedules and pretrained initialisation of the trainer.

Schedules are checked against hand-computed values at chosen steps (no training); each
optimizer takes a real step on a tiny model; a schedule survives ``model.save`` →
``load_keras_model`` (what resuming does); pretrained init is checked on two tiny
ismir2016 models with different class counts; two 1-epoch runs on the shared synthetic
data use nesterov + step and a fine-tune from the shared run's ``best.keras``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from conftest import tiny_cfg  # noqa: E402

from birdnet_tf.config import Config  # noqa: E402
from birdnet_tf.errors import BirdnetError, ConfigError  # noqa: E402
from birdnet_tf.models.build import build_model, load_keras_model  # noqa: E402
from birdnet_tf.train.init_weights import apply_init_weights, read_init_weights  # noqa: E402
from birdnet_tf.train.optim import make_optimizer, make_schedule  # noqa: E402
from birdnet_tf.train.trainer import train  # noqa: E402


def approx(value):
    return pytest.approx(value, rel=1e-5)  # float32 arithmetic


def lr_at(lr, step: int) -> float:
    return float(lr(step)) if callable(lr) else float(lr)


def cfg_with(*settings: str) -> Config:
    return Config().replace(["train.epochs=10", "train.learning_rate=0.01", "train.min_learning_rate=0.0001",
                             "train.warmup_epochs=0", *settings])


# ------------------------------------------------------------------ schedules
def test_default_is_adamw_with_the_cosine_schedule_of_before():
    cfg = Config()
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.train.init_weights) == ("adamw", "cosine", "")
    opt = make_optimizer(cfg, steps_per_epoch=10)
    assert type(opt) is keras.optimizers.AdamW and opt.weight_decay == approx(1e-4)
    lr = opt._learning_rate
    assert isinstance(lr, keras.optimizers.schedules.CosineDecay)
    # 50 epochs x 10 steps, 1 warm-up epoch: 10 steps from 3e-4 to 3e-3, then cosine to 1e-5 over 490 steps
    assert lr_at(lr, 0) == approx(3e-4)
    assert lr_at(lr, 5) == approx(3e-4 + 0.5 * (3e-3 - 3e-4))
    assert lr_at(lr, 10) == approx(3e-3)
    alpha = 1e-5 / 3e-3
    mid = 3e-3 * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * 245 / 490)) + alpha)
    assert lr_at(lr, 255) == approx(mid)
    assert lr_at(lr, 500) == approx(1e-5)


def test_step_schedule():
    lr = make_schedule(cfg_with("train.schedule=step", "train.lr_step_epochs=3", "train.lr_step_factor=0.5"), 4)
    # 12 steps per factor
    for step, want in [(0, 0.01), (11, 0.01), (12, 0.005), (23, 0.005), (24, 0.0025), (36, 0.00125)]:
        assert lr_at(lr, step) == approx(want), step
    floor = make_schedule(cfg_with("train.schedule=step", "train.lr_step_epochs=1", "train.lr_step_factor=0.1"), 4)
    assert lr_at(floor, 4) == approx(0.001) and lr_at(floor, 8) == approx(0.0001)
    assert lr_at(floor, 39) == approx(0.0001)  # min_learning_rate is the floor


def test_linear_schedule():
    lr = make_schedule(cfg_with("train.schedule=linear"), 4)  # 40 steps from 0.01 to 0.0001
    assert lr_at(lr, 0) == approx(0.01)
    assert lr_at(lr, 10) == approx(0.01 - 0.25 * 0.0099)
    assert lr_at(lr, 20) == approx(0.00505)
    assert lr_at(lr, 40) == approx(0.0001) and lr_at(lr, 100) == approx(0.0001)


def test_root_schedule_is_the_baselines_lr_over_sqrt_epoch():
    lr = make_schedule(cfg_with("train.schedule=root"), 4)
    for epoch in range(1, 11):  # baseline: lr_start / sqrt(epoch), 1-based, at each epoch's first step
        assert lr_at(lr, 4 * (epoch - 1)) == approx(0.01 / math.sqrt(epoch))
    assert lr_at(lr, 2) == approx(0.01 / math.sqrt(1.5))  # continuous in between
    floored = make_schedule(cfg_with("train.schedule=root", "train.min_learning_rate=0.004"), 4)
    assert lr_at(floored, 36) == approx(0.004)  # 0.01 / sqrt(10) = 0.00316 < floor


def test_constant_schedule_and_warmup_for_every_schedule():
    assert make_schedule(cfg_with("train.schedule=constant"), 4) == approx(0.01)
    for name, after in [("constant", 0.01), ("step", 0.01), ("linear", 0.01), ("root", 0.01), ("cosine", 0.01)]:
        lr = make_schedule(cfg_with(f"train.schedule={name}", "train.warmup_epochs=2"), 4)  # 8 warm-up steps
        assert lr_at(lr, 0) == approx(0.001), name
        assert lr_at(lr, 4) == approx(0.001 + 0.5 * 0.009), name
        assert lr_at(lr, 8) == approx(after), name
    root = make_schedule(cfg_with("train.schedule=root", "train.warmup_epochs=2"), 4)
    assert lr_at(root, 8 + 4) == approx(0.01 / math.sqrt(2))  # epochs count after warm-up
    linear = make_schedule(cfg_with("train.schedule=linear", "train.warmup_epochs=2"), 4)
    assert lr_at(linear, 8 + 16) == approx(0.00505)  # decays over the 32 steps after warm-up


def test_bad_schedule_and_optimizer_settings():
    with pytest.raises(ConfigError, match="train.schedule must be one of"):
        make_schedule(cfg_with("train.schedule=exponential"), 4)
    with pytest.raises(ConfigError, match="lr_step_factor"):
        make_schedule(cfg_with("train.schedule=step", "train.lr_step_factor=2"), 4)
    with pytest.raises(ConfigError, match="train.optimizer must be one of"):
        make_optimizer(cfg_with("train.optimizer=rmsprop"), 4)
    with pytest.raises(ConfigError, match="momentum"):
        make_optimizer(cfg_with("train.optimizer=sgd", "train.momentum=1.5"), 4)


# ----------------------------------------------------------------- optimizers
def tiny_dense() -> keras.Model:
    inp = keras.Input((3,))
    return keras.Model(inp, keras.layers.Dense(2, kernel_initializer="ones", name="d")(inp))


@pytest.mark.parametrize("name,cls", [("adamw", "AdamW"), ("adam", "Adam"), ("sgd", "SGD"), ("nesterov", "SGD")])
def test_each_optimizer_takes_a_step(name, cls):
    cfg = cfg_with(f"train.optimizer={name}", "train.schedule=step", "train.weight_decay=0.01")
    opt = make_optimizer(cfg, 4)
    assert type(opt).__name__ == cls
    if cls == "SGD":
        assert opt.nesterov == (name == "nesterov") and opt.momentum == approx(0.9)
    model = tiny_dense()
    model.compile(optimizer=opt, loss="mse")
    w0 = model.get_layer("d").get_weights()[0].copy()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.train_on_batch(x, y)
    assert int(model.optimizer.iterations.numpy()) == 1
    w1 = model.get_layer("d").get_weights()[0]
    assert np.all(w1 < w0)  # the gradient of the mse towards 0 lowers every weight

    # weight decay alone (zero gradients): w <- w - lr * wd * w, for every optimizer
    model2 = tiny_dense()
    opt2 = make_optimizer(cfg, 4)
    opt2.apply_gradients([(keras.ops.zeros_like(v), v) for v in model2.trainable_variables])
    assert model2.get_layer("d").get_weights()[0] == approx(np.full((3, 2), 1 - 0.01 * 0.01))


def test_no_weight_decay_when_zero():
    opt = make_optimizer(cfg_with("train.optimizer=sgd", "train.weight_decay=0"), 4)
    model = tiny_dense()
    opt.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    assert np.all(model.get_layer("d").get_weights()[0] == 1.0)


@pytest.mark.parametrize("schedule", ["step", "linear", "root", "constant"])
def test_schedule_survives_save_and_load(tmp_path, schedule):
    cfg = cfg_with("train.optimizer=nesterov", f"train.schedule={schedule}", "train.warmup_epochs=1",
                   "train.lr_step_epochs=2")
    model = tiny_dense()
    model.compile(optimizer=make_optimizer(cfg, 4), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(13)
    want = float(model.optimizer.learning_rate)
    model.save(tmp_path / "last.keras")
    loaded = load_keras_model(tmp_path / "last.keras")
    lr = loaded.optimizer._learning_rate
    assert type(lr).__name__ == type(model.optimizer._learning_rate).__name__
    assert lr.get_config() == model.optimizer._learning_rate.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 13
    assert float(loaded.optimizer.learning_rate) == approx(want)
    assert loaded.optimizer.nesterov


# -------------------------------------------------------------- pretrained init
@pytest.fixture(scope="module")
def source_models(tmp_path_factory):
    """A tiny 5-class model saved as .keras and .weights.h5 (weights made distinctive)."""
    root = tmp_path_factory.mktemp("src")
    model = build_model(tiny_cfg(), 5)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        layer.set_weights([rng.uniform(0.5, 1.5, np.shape(w)).astype("float32") for w in layer.get_weights()])
    model.compile(optimizer=make_optimizer(tiny_cfg("train.schedule=root"), 3), loss="mse")
    model.save(root / "src.keras")
    model.save_weights(root / "src.weights.h5")
    return model, root


def weights_of(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


@pytest.mark.parametrize("fmt", ["keras", "weights.h5"])
def test_init_skip_output_loads_all_but_frame_logits(source_models, fmt):
    source, root = source_models
    cfg = tiny_cfg(f"train.init_weights={root / f'src.{fmt}'}", "train.init_skip_output=true")
    lines = []
    weights = read_init_weights(cfg, 3, log=lines.append)
    model = build_model(cfg, 3)
    fresh_logits = model.get_layer("frame_logits").get_weights()
    apply_init_weights(model, weights)
    src, new = weights_of(source), weights_of(model)
    assert "frame_logits" not in weights and set(weights) == set(new) - {"frame_logits"}
    for name in weights:
        for a, b in zip(src[name], new[name]):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh_logits, new["frame_logits"]):
        np.testing.assert_array_equal(a, b)
    assert f"{len(weights)} layer(s) loaded, 1 skipped (frame_logits)" in lines[0]


@pytest.mark.parametrize("fmt", ["keras", "weights.h5"])
def test_init_with_output_needs_the_same_classes(source_models, fmt):
    source, root = source_models
    cfg = tiny_cfg(f"train.init_weights={root / f'src.{fmt}'}")
    with pytest.raises(BirdnetError, match="init_skip_output=true to fine-tune on new classes"):
        read_init_weights(cfg, 3)
    weights = read_init_weights(cfg, 5, log=lambda s: None)
    model = build_model(cfg, 5)
    apply_init_weights(model, weights)
    src, new = weights_of(source), weights_of(model)
    assert set(weights) == set(src) and "frame_logits" in weights
    for name in src:
        for a, b in zip(src[name], new[name]):
            np.testing.assert_array_equal(a, b)


def test_init_errors(source_models, tmp_path):
    _, root = source_models
    with pytest.raises(BirdnetError, match="does not exist"):
        read_init_weights(tiny_cfg(f"train.init_weights={tmp_path / 'nope.keras'}"), 3)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(BirdnetError, match=r"must be a \.keras model or a \.weights\.h5"):
        read_init_weights(tiny_cfg(f"train.init_weights={tmp_path / 'w.npz'}"), 3)
    (tmp_path / "junk.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(BirdnetError, match="junk.weights.h5: cannot read weights"):
        read_init_weights(tiny_cfg(f"train.init_weights={tmp_path / 'junk.weights.h5'}"), 3)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="unrelated")])
    other.save(tmp_path / "other.keras")
    with pytest.raises(BirdnetError, match="none of its layers matches"):
        read_init_weights(tiny_cfg(f"train.init_weights={tmp_path / 'other.keras'}",
                                   "train.init_skip_output=true"), 3)
    # a wider model of the same architecture: nothing but the parameter-free-shaped layers fit
    with pytest.raises(BirdnetError, match="none of its layers matches|does not fit"):
        read_init_weights(tiny_cfg(f"train.init_weights={root / 'src.weights.h5'}", "model.width=1.0",
                                   "model.dense_units=64", "frontend.n_mels=64"), 5)


# ------------------------------------------------------------------ end to end
def test_train_nesterov_step(trained_synthetic, tmp_path):
    cfg = tiny_cfg("train.optimizer=nesterov", "train.schedule=step", "train.lr_step_epochs=0.5",
                   "train.learning_rate=0.01", "train.early_stopping_patience=1")
    summary = train(cfg, trained_synthetic.prepared, tmp_path / "run", workers=1, evaluate=False, log=lambda s: None)
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1
    model = load_keras_model(tmp_path / "run" / "checkpoints" / "last.keras")
    opt = model.optimizer
    assert type(opt).__name__ == "SGD" and opt.nesterov
    steps = int(opt.iterations.numpy())
    assert steps >= 1
    sched = opt._learning_rate
    assert type(sched).__name__ == "StepSchedule" and sched.steps_per_epoch == steps
    # half an epoch per step of the schedule: after the run the rate was divided by 10 twice (or once)
    want = max(1e-5, 0.01 * 0.1 ** math.floor(steps / max(1.0, 0.5 * steps)))
    assert float(opt.learning_rate) == approx(want)


def test_models_with_a_schedule_load_in_a_fresh_process(tmp_path):
    """evaluate / export / predict load best.keras in a new process: the schedule must be known there."""
    model = tiny_dense()
    model.compile(optimizer=make_optimizer(cfg_with("train.schedule=root"), 4), loss="mse")
    model.save(tmp_path / "best.keras")
    code = ("import sys; from birdnet_tf.models.build import load_keras_model; "
            "m = load_keras_model(sys.argv[1]); print(type(m.optimizer._learning_rate).__name__)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "best.keras")], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("RootSchedule"), (
        "load_keras_model must register the learning-rate schedules (birdnet_tf.models.objects."
        f"custom_objects()) before loading:\n{proc.stderr[-1500:]}")


def test_train_fine_tune_from_best_keras(trained_synthetic, tmp_path):
    best = Path(trained_synthetic.run) / "best.keras"
    src = {layer.name: layer.get_weights() for layer in load_keras_model(best).layers if layer.weights}
    lines = []
    cfg = tiny_cfg(f"train.init_weights={best}", "train.init_skip_output=true", "train.learning_rate=1e-12",
                   "train.weight_decay=0", "train.schedule=constant")
    train(cfg, trained_synthetic.prepared, tmp_path / "run", workers=1, evaluate=False, log=lines.append)
    assert any("layer(s) loaded, 1 skipped (frame_logits)" in s for s in lines)
    new = load_keras_model(tmp_path / "run" / "checkpoints" / "last.keras")
    # with a learning rate of 1e-12 the trained kernels stay those of best.keras
    for name in ("c1_conv", "fc2_conv"):
        np.testing.assert_allclose(new.get_layer(name).get_weights()[0], src[name][0], atol=1e-6)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["init_weights"] == str(best)

    # a missing init file is refused before anything is written
    with pytest.raises(BirdnetError, match="does not exist"):
        train(tiny_cfg(f"train.init_weights={tmp_path / 'missing.keras'}"), trained_synthetic.prepared,
              tmp_path / "run2", workers=1, evaluate=False, log=lambda s: None)
    assert not (tmp_path / "run2").exists()


# ------------------------------------------------------------------ plateau (OFAI)
def test_plateau_decay_drops_after_patience_at_most_drops_times_and_warms_up():
    from birdnet_tf.train.callbacks import PlateauDecay

    cfg = tiny_cfg("train.schedule=plateau", "train.learning_rate=0.01", "train.min_learning_rate=0.00005")
    assert make_schedule(cfg, 10) == 0.01  # a plain rate: the callback lowers it
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=make_optimizer(cfg, 10), loss="mse")
    state, messages = {}, []
    cb = PlateauDecay("val_x", patience=2, factor=0.1, drops=2, base_lr=0.01, min_lr=5e-5, warmup_steps=4,
                      state=state, log=messages.append)
    cb.set_model(model)
    opt = model.optimizer
    for step, want in ((0, 0.001), (2, 0.0055), (4, 0.01)):  # warm-up ramp from 0.1x, then the level
        opt.iterations.assign(step)
        cb.on_train_batch_begin(0)
        assert float(opt.learning_rate.numpy()) == approx(want)
    seen = []
    for epoch, value in enumerate([0.5, 0.4, 0.45, 0.6, 0.6, 0.3, 0.2, 0.1, 0.1]):
        logs = {"val_x": value}
        cb.on_epoch_end(epoch, logs)
        seen.append(logs["learning_rate"])
    # no improvement for 2 epochs after 0.5 -> 1e-3; after 0.6 two more -> 1e-4; then capped at 2 drops
    assert seen == [approx(x) for x in (0.01, 0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001, 0.0001, 0.0001)]
    assert state["plateau"] == {"best": 0.6, "wait": 3, "drops": 2}
    assert len(messages) == 2 and "drop 2 of 2" in messages[1]
    # a rate floor
    state2 = {"plateau": {"best": 1.0, "wait": 0, "drops": 0}}
    cb2 = PlateauDecay("val_x", 1, 0.001, 3, 0.01, 5e-5, 0, state2, log=lambda m: None)
    cb2.set_model(model)
    cb2.on_epoch_end(0, {"val_x": 0.5})
    assert float(opt.learning_rate.numpy()) == approx(5e-5)


def test_train_with_plateau_schedule_records_its_counters(trained_synthetic, tmp_path):
    cfg = tiny_cfg("train.schedule=plateau", "train.lr_plateau_patience=1", "train.epochs=3",
                   "train.steps_per_epoch=2", "train.learning_rate=0.01", "train.warmup_epochs=0")
    train(cfg, trained_synthetic.prepared, tmp_path / "run", workers=1, evaluate=False, log=lambda s: None)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    p = state["plateau"]
    assert set(p) == {"best", "wait", "drops"} and p["best"] == approx(state["best"])
    model = load_keras_model(tmp_path / "run" / "checkpoints" / "last.keras")
    # the saved optimizer holds the decayed rate, so a resumed run goes on from it
    assert float(model.optimizer.learning_rate) == approx(0.01 * 0.1 ** p["drops"])
    history = __import__("pandas").read_csv(tmp_path / "run" / "history.csv")
    assert "learning_rate" in history.columns and len(history) == 3
    with pytest.raises(ConfigError, match="plateau"):
        make_schedule(tiny_cfg("train.schedule=plateau", "train.lr_plateau_patience=0"), 10)
