"""Feature distillation (issue 11): a teacher's per-window embeddings (an embedding table) as the
target of an auxiliary head that trains beside the soft-target loss and is not in the export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from conftest import (  # noqa: E402
    SYNTH_CLASSES,
    interrupt_training_at_epoch_2,
    synth_signal,
    tiny_cfg,
    write_synthetic_dataset,
)

from birdnet_tf.distill.features import (  # noqa: E402
    EmbeddingTable,
    FeatureTargets,
    fit_pca,
    read_embedding_table,
    write_embedding_table,
)
from birdnet_tf.errors import BirdnetError, ConfigError  # noqa: E402


def windows_of(files, seconds, hop_s=1.0):
    """``(row_file, start_s, end_s)`` of consecutive ``hop_s`` windows of each file."""
    rows = [(f, k * hop_s, min(k * hop_s + hop_s, s)) for f, s in zip(files, seconds)
            for k in range(int(np.ceil(s / hop_s)))]
    return [np.array(v) for v in zip(*rows)]


def test_embedding_table_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(BirdnetError, match=r"nowhere\.npz: embedding table does not exist"):
        read_embedding_table(tmp_path / "nowhere.npz")
    np.savez(tmp_path / "other.npz", row_file=np.array(["a.wav"]), vectors=np.zeros((1, 4)))
    with pytest.raises(BirdnetError, match=r"other\.npz: not an embedding table \(lacks start_s, end_s\)"):
        read_embedding_table(tmp_path / "other.npz")
    f, s, e = windows_of(["a.wav", "b.wav"], [2.0, 2.0])
    write_embedding_table(tmp_path / "emb.npz", f, s, e, np.ones((len(f), 6)))
    table = read_embedding_table(tmp_path / "emb.npz")
    assert table.files == ["a.wav", "b.wav"] and table.dims == 6 and table.vectors.dtype == np.float32
    with pytest.raises(BirdnetError, match=r"emb\.npz: embedding vectors have 6 dimensions, expected 1024"):
        FeatureTargets(table, ["x/a.wav"], ["a.wav"], expect_dims=1024, log=lambda m: None)
    with pytest.raises(BirdnetError, match=r"emb\.npz: holds no window of any of the 1 training files"):
        FeatureTargets(table, ["x/c.wav"], ["c.wav"], log=lambda m: None)


def test_targets_pool_projected_windows_and_pca_sees_training_files_only():
    rng = np.random.default_rng(0)
    f, s, e = windows_of(["a.wav", "b.wav", "val.wav"], [3.0, 2.0, 2.0])
    vectors = rng.standard_normal((len(f), 5)).astype(np.float32)
    vectors[f == "val.wav"] += 100.0  # a validation file's windows would move the PCA mean
    files, fi = np.unique(f, return_inverse=True)
    table = EmbeddingTable(list(files), fi.astype(np.int64), s, e, vectors, "emb.npz")
    logs = []
    ft = FeatureTargets(table, ["sp/a.wav", "sp/b.wav", "sp/missing.wav"], ["a.wav", "b.wav", "missing.wav"],
                        dims=3, log=logs.append)
    train = vectors[f != "val.wav"]
    mean, comps = fit_pca(train, 3)
    np.testing.assert_allclose(ft.mean, train.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(np.abs(ft.components), np.abs(comps), atol=1e-5)
    assert ft.dims == 3 and ft.unmatched == 1 and "missing.wav" in logs[0]
    # excerpt 0.5..2.0 s of a.wav: window 0 (0.5 s) and window 1 (1 s)
    got = ft.pool(0, 0.5, 2.0).numpy()
    proj = (vectors[:2] - ft.mean) @ ft.components
    np.testing.assert_allclose(got[:, 0], (0.5 * proj[0] + 1.0 * proj[1]) / 1.5, atol=1e-5)
    np.testing.assert_array_equal(got[:, 1], 1.0)
    np.testing.assert_array_equal(ft.pool(2, 0.0, 1.0).numpy()[:, 1], 0.0)  # missing.wav: unknown


def test_feature_settings_are_checked_before_anything_is_written(tmp_path):
    from birdnet_tf.distill.setup import check_distill_config

    with pytest.raises(BirdnetError, match=r"none\.npz: distill.features embedding table does not exist"):
        check_distill_config(tiny_cfg(f"distill.features={tmp_path / 'none.npz'}"))
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match="distill.feature_weight must be >= 0"):
        check_distill_config(tiny_cfg(f"distill.features={tmp_path / 'e.npz'}", "distill.feature_weight=-1"))


def test_auxiliary_head_fits_the_teacher_vectors_beside_the_soft_targets():
    import keras

    from birdnet_tf.distill.teachers import make_distiller
    from birdnet_tf.models.build import build_model

    cfg = tiny_cfg("model.output_activation=sigmoid")
    keras.utils.set_random_seed(0)
    student = build_model(cfg, 3)
    student.compile(optimizer=keras.optimizers.Adam(0.01))
    distiller = make_distiller(student, [], 1, np.ones(1, np.float32), 0.5, "sigmoid", cfg.audio.sample_rate_hz,
                               feature_dims=8, feature_weight=5.0, feature_lr=0.01)
    distiller.compile(optimizer=student.optimizer)
    rng = np.random.default_rng(0)
    kinds = np.arange(24) % 3
    x = np.stack([synth_signal(SYNTH_CLASSES[k], 2.0, cfg.audio.sample_rate_hz, rng) for k in kinds]).astype(np.float32)
    direction = rng.standard_normal((3, 8))
    labels = np.eye(3, dtype=np.float32)[kinds]
    vectors = direction[kinds] + 0.2 * rng.standard_normal((24, 8))
    table = np.concatenate([0.8 * labels, vectors], axis=1)[:, None].astype(np.float32)  # [B, 1, C + dims]
    y = {"labels": labels, "table": table, "known": np.ones_like(table)}
    cosine = distiller.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0).history["feature_cosine"]
    assert cosine[-1] > cosine[0] + 0.2 and cosine[-1] > 0.5, cosine
    # the head is the distiller's, trained by its own optimizer: the student's optimizer knows only the student
    assert not any("feature" in v.path for v in student.weights)
    plain = keras.optimizers.Adam(0.01)
    plain.build(student.trainable_variables)
    assert len(student.optimizer.variables) == len(plain.variables)
    assert {id(v) for v in distiller.trainable_weights} == {id(v) for v in student.trainable_weights}


def test_a_feature_run_resumes_and_exports_without_the_head(tmp_path, monkeypatch):
    from birdnet_tf.export import ExportedModel, export_run
    from birdnet_tf.models.build import load_keras_model
    from birdnet_tf.train import trainer

    data = write_synthetic_dataset(tmp_path / "synth", files_per_class=2)
    rng = np.random.default_rng(1)
    rows = []
    for wav in sorted(data.rglob("*.wav")):
        f, s, e = windows_of([wav.relative_to(data).as_posix()], [sf.info(wav).duration])
        rows += list(zip(f, s, e))
    f, s, e = (np.array(v) for v in zip(*rows))
    write_embedding_table(tmp_path / "emb.npz", f, s, e, rng.standard_normal((len(f), 16)))
    cfg = tiny_cfg("train.epochs=2", "train.steps_per_epoch=2", f"distill.features={tmp_path / 'emb.npz'}",
                   "distill.feature_dims=4")
    run = tmp_path / "run"
    logs = []
    resume_normally = interrupt_training_at_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, data, run, workers=1, evaluate=False, log=logs.append)
    resume_normally()  # the student's optimizer (saved with it) resumes whole; the head starts anew
    trainer.train(cfg, data, run, workers=1, evaluate=False, log=logs.append)
    assert any("feature distillation" in str(m) and "4 principal components" in str(m) for m in logs)
    assert int(load_keras_model(run / "checkpoints" / "last.keras").optimizer.iterations.numpy()) == 4
    with open(run / "history.csv") as fh:
        assert len([float(r["feature_cosine"]) for r in csv.DictReader(fh)]) == 2
    assert json.loads((run / "config.json").read_text())["distill"]["features"] == str((tmp_path / "emb.npz").resolve())
    # the student alone is saved and exported: no auxiliary head, the plain scores signature
    best = load_keras_model(run / "best.keras")
    assert not any("feature" in layer.name for layer in best.layers) and best.output.shape[-1] == len(SYNTH_CLASSES)
    export_run(run, tmp_path / "export", log=lambda m: None)
    exported = ExportedModel(tmp_path / "export")
    assert list(exported.signature("serving_default").structured_outputs) == ["scores"]
    assert exported(np.zeros((1, 44100), np.float32)).shape == (1, len(SYNTH_CLASSES))


def test_teacher_birdnet_embeddings_take_the_training_files_of_a_split(tmp_path):
    from conftest import run_cli

    data = write_synthetic_dataset(tmp_path / "synth", files_per_class=1)
    (tmp_path / "bad.csv").write_text("file,fold\na,1\n")
    rc, _, err = run_cli(["teacher", "birdnet", str(data), "--embeddings", "--split", str(tmp_path / "bad.csv"),
                          "--out", str(tmp_path / "emb.npz"), "--birdnet-env", str(tmp_path / "no-env")])
    assert rc != 0 and "bad.csv: a split file needs the columns key and split" in err
    (tmp_path / "split.csv").write_text("key,split\ntone1k/tone1k_0.wav,val\nelsewhere.wav,train\n")
    rc, _, err = run_cli(["teacher", "birdnet", str(data), "--embeddings", "--split", str(tmp_path / "split.csv"),
                          "--out", str(tmp_path / "emb.npz"), "--birdnet-env", str(tmp_path / "no-env")])
    assert rc != 0 and "split.csv: names none of the 3 files as train" in err
    (tmp_path / "split.csv").write_text("key,split\ntone1k/tone1k_0.wav,train\n")
    rc, _, err = run_cli(["teacher", "birdnet", str(data), "--embeddings", "--split", str(tmp_path / "split.csv"),
                          "--out", str(tmp_path / "emb.npz"), "--birdnet-env", str(tmp_path / "no-env")])
    assert rc != 0 and "no BirdNET environment found" in err and not (tmp_path / "emb.npz").exists()
