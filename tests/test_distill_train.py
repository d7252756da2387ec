"""Distillation on the training side (issue 11): teachers' soft targets, masking, excerpt targets
pooled from teacher-table windows, model teachers (run, export, another sample rate), resume,
born-again generations, pseudo-labels and the agreement that evaluate reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from conftest import TINY_SETTINGS, interrupt_training_at_epoch_2, run_cli, tiny_set_args  # noqa: E402

from birdnet_tf.config import Config  # noqa: E402
from birdnet_tf.distill.table import TeacherTable  # noqa: E402
from birdnet_tf.distill.targets import TableTargets, match_table_files, pool_windows_np  # noqa: E402
from birdnet_tf.distill.teachers import (  # noqa: E402
    combine_teachers,
    distill_loss,
    load_model_teacher,
    make_distiller,
    resample,
    soft_target,
    teacher_kind,
    teacher_weights,
)
from birdnet_tf.errors import BirdnetError, ConfigError  # noqa: E402


def table_of(labels, files, windows, scores, known, complete=True, source="t.csv") -> TeacherTable:
    """A TeacherTable from per-window ``(file_index, start_s, end_s)`` rows."""
    fi, st, en = (np.array(v) for v in zip(*windows))
    return TeacherTable(list(labels), list(files), fi.astype(np.int64), st.astype(float), en.astype(float),
                        np.asarray(scores, np.float32), np.asarray(known, bool), complete, source)


# ------------------------------------------------------------------ targets and loss
def test_mean_of_several_teachers_by_hand(tmp_path):
    scores = np.array([[[0.9, 0.2, 0.0], [0.5, 0.4, 0.7], [0.1, 0.0, 0.3]]], np.float32)  # [B=1, K=3, C=3]
    known = np.array([[[1, 1, 0], [1, 0, 1], [1, 1, 0]]], np.float32)
    t, m = combine_teachers(scores, known, np.full(3, 1 / 3))
    # class 0: all three know it → (0.9+0.5+0.1)/3; class 1: teachers 0 and 2 → (0.2+0.0)/2; class 2: teacher 1 alone
    np.testing.assert_allclose(t.numpy()[0], [0.5, 0.1, 0.7], atol=1e-6)
    np.testing.assert_array_equal(m.numpy()[0], [1, 1, 1])
    w = np.array([0.5, 0.25, 0.25])
    t, _ = combine_teachers(scores, known, w)
    np.testing.assert_allclose(t.numpy()[0], [0.5 * 0.9 + 0.25 * 0.5 + 0.25 * 0.1, (0.5 * 0.2) / 0.75, 0.7], atol=1e-6)
    from birdnet_tf.distill.targets import apply_temperature

    soft = apply_temperature(np.array([0.9, 0.5, 0.1]), 2.0)  # sigmoid(logit(p) / T): nearer 0.5, same order
    np.testing.assert_allclose(soft, [0.75, 0.5, 0.25], atol=1e-6)
    t, m = combine_teachers(scores, np.zeros_like(known), w)  # nobody knows anything: no teacher at all
    assert not m.numpy().any()
    target = soft_target(tf.constant([[1.0, 0.0, 0.5]]), t, m, 0.5)
    np.testing.assert_allclose(target.numpy(), [[1.0, 0.0, 0.5]])
    # weights.json of birdnet-tf ensemble, matched by the teacher path as given or its folder name
    (tmp_path / "weights.json").write_text(json.dumps({"weights": {"runs/a": 3, "runs/b": 1}}))
    np.testing.assert_allclose(teacher_weights(["runs/a", str(tmp_path / "b")], str(tmp_path / "weights.json")),
                               [0.75, 0.25])
    with pytest.raises(BirdnetError, match="no weight for teacher"):
        teacher_weights(["runs/c"], str(tmp_path / "weights.json"))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_class_unknown_to_the_teacher_gets_no_teacher_gradient_but_its_label_teaches(activation):
    import keras

    inp = keras.Input((4,))
    student = keras.Model(inp, keras.layers.Activation(activation, name="scores")(keras.layers.Dense(3)(inp)))
    distiller = make_distiller(student, [], 1, np.ones(1, np.float32), 0.5, activation, 22050)
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 4)), tf.float32)
    labels = tf.constant([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    known = tf.constant([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]]])  # class 2 unknown to the teacher

    def loss_and_grad(teacher_c2):
        table = tf.constant([[[0.8, 0.1, teacher_c2]], [[0.2, 0.7, teacher_c2]]])
        with tf.GradientTape() as tape:
            loss = distiller.compute_loss(x, {"labels": labels, "table": table, "known": known}, student(x))
        return float(loss), tape.gradient(loss, student.trainable_variables)[0].numpy()

    l1, g1 = loss_and_grad(0.0)
    l2, g2 = loss_and_grad(0.9)  # the unknown cell's value never matters: it is masked, not a zero score
    assert l1 == pytest.approx(l2, abs=1e-7)
    np.testing.assert_allclose(g1, g2, atol=1e-7)
    # the label alone teaches class 2: its target is the label, and the loss equals that target's loss
    target = np.array([[0.5 * 0.8, 0.5 * 0.1, 1.0], [0.5 * 0.2, 0.5 * 0.7 + 0.5, 0.0]])
    expected = float(tf.reduce_mean(distill_loss(tf.constant(target, tf.float32), student(x), activation)))
    assert l1 == pytest.approx(expected, rel=1e-5)
    if activation == "sigmoid":  # class 2's logit gradient is (p - label) / C, non-zero: the label teaches it
        with tf.GradientTape() as tape:
            logits = tf.Variable(tf.zeros((2, 3)))
            tape.watch(logits)
            loss = tf.reduce_mean(distill_loss(tf.constant(target, tf.float32), tf.sigmoid(logits), "sigmoid"))
        g = tape.gradient(loss, logits).numpy()
        np.testing.assert_allclose(g[:, 2], (0.5 - target[:, 2]) / 3 / 2, atol=1e-6)


def test_excerpt_target_pools_overlapping_windows_as_numpy_does():
    rng = np.random.default_rng(1)
    labels = ["a", "b", "c"]
    files = ["sp/x1.mp3", "sp/x2.mp3", "other/x3.wav"]
    windows = [(0, 3.0 * k, 3.0 * k + 3.0) for k in range(5)] + [(1, 1.5 * k, 1.5 * k + 3.0) for k in range(6)] \
        + [(2, 0.0, 3.0)]
    scores = rng.random((len(windows), 3)).astype(np.float32)
    known = rng.random((len(windows), 3)) > 0.3
    known[:, 2] = False  # a class the teacher does not know at all
    table = table_of(labels, files, windows, scores, known, complete=False)
    logs = []
    keys = ["sp/X1.mp3", "x2.wav", "sp/missing.mp3"]  # by path (case), by stem, none
    assert list(match_table_files(table, keys, ["/c/sp/X1.wav", "/c/x2.wav", "/c/missing.wav"])) == [0, 1, -1]
    pooled = TableTargets([table], keys, ["/c/sp/X1.wav", "/c/x2.wav", "/c/missing.wav"], log=logs.append)
    assert pooled.unmatched == [1] and "sp/missing.mp3" in logs[0] and "labels alone" in logs[0]
    label = tf.constant([0.0, 1.0, 0.5])
    for f, (s, e) in [(0, (1.0, 4.0)), (0, (2.9, 3.1)), (0, (0.0, 15.0)), (1, (2.2, 5.2)), (1, (7.0, 9.9))]:
        rows = np.flatnonzero(table.file_index == f)
        want_t, want_m = pool_windows_np(table.start_s[rows], table.end_s[rows], scores[rows], known[rows], s, e)
        got = pooled.pool(f, s, e, label).numpy()[0]
        np.testing.assert_array_equal(got[:, 1] > 0, want_m)
        np.testing.assert_allclose(got[:, 0], np.where(want_m, want_t, label.numpy()), atol=1e-5)
        assert not want_m[2]
    got = pooled.pool(2, 0.0, 3.0, label).numpy()[0]  # a file the table lacks: its labels alone
    np.testing.assert_array_equal(got[:, 1], 0)
    np.testing.assert_allclose(got[:, 0], label.numpy())
    # by hand: windows [0,3) and [3,6) of file 0, excerpt [2,5): 1 s of the first, 2 s of the second
    w = np.array([1.0, 2.0]) * known[:2, 0]
    if w.sum():
        assert pooled.pool(0, 2.0, 5.0, label).numpy()[0, 0, 0] == pytest.approx(
            (w * scores[:2, 0]).sum() / w.sum(), abs=1e-6)


def write_wav_dataset(root: Path, seconds=(4.0, 1.0, 6.0, 3.0), rate: int = 22050) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, s in enumerate(seconds):
        p = root / f"f{i}.wav"
        sf.write(p, 0.1 * rng.standard_normal(int(s * rate)), rate, subtype="PCM_16")
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("bucketed", [False, True])
def test_training_batches_carry_pooled_teacher_targets(tmp_path, bucketed):
    from birdnet_tf.data.pipeline import training_dataset

    paths = write_wav_dataset(tmp_path)
    labels = ["a", "b", "c"]
    # f0 and f2: constant scores in every window; f1 (1 s, looped): one window; f3: not in the table
    windows = [(0, 3.0 * k, 3.0 * k + 3.0) for k in range(2)] + [(1, 0.0, 1.0)] + \
        [(2, 3.0 * k, 3.0 * k + 3.0) for k in range(2)]
    scores = [[0.9, 0.1, 0.0]] * 2 + [[0.3, 0.6, 0.0]] + [[0.2, 0.2, 0.0]] * 2
    known = [[1, 1, 0]] * 5
    table = table_of(labels, ["f0.wav", "f1.wav", "f2.wav"], windows, scores, known)
    targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    extra = ["data.excerpt_max_s=3.0", "data.length_buckets=2"] if bucketed else []
    cfg = Config().replace(TINY_SETTINGS + ["augment.mixup_prob=0", "data.min_excerpts_per_file=2",
                                            "data.max_excerpts_per_file=2", "data.excerpt_s=1.5"] + extra)
    pooled = TableTargets([table], [Path(p).name for p in paths], paths, log=lambda m: None)
    ds = training_dataset(paths, targets, np.array([4.0, 1.0, 6.0, 3.0]), cfg, tables=pooled)
    seen = 0
    expect = {0: [0.9, 0.1], 1: [0.3, 0.6], 2: [0.2, 0.2]}
    for x, y in ds:
        assert set(y) == {"labels", "table", "known"}
        for lab, t, k in zip(y["labels"].numpy(), y["table"].numpy()[:, 0], y["known"].numpy()[:, 0]):
            f = int(np.argmax(lab))  # f0, f1, f2 by their class; f3 (class a too) is the one unknown
            if f == 0 and k[0] == 0:  # f3: not in the table
                np.testing.assert_array_equal(k, 0)
                np.testing.assert_allclose(t, lab)
            else:
                np.testing.assert_array_equal(k, [1, 1, 0])
                np.testing.assert_allclose(t[:2], expect[f], atol=1e-6)
                assert t[2] == lab[2]
            seen += 1
    assert seen == 8


def test_pseudo_label_ratio_per_batch(tmp_path):
    from birdnet_tf.data.pipeline import training_dataset, unlabeled_per_batch

    paths = write_wav_dataset(tmp_path / "lab")
    upaths = write_wav_dataset(tmp_path / "unl", seconds=(5.0, 2.0))
    cfg = Config().replace(TINY_SETTINGS + ["data.batch_size=8", "distill.pseudo_ratio=0.25", "augment.mixup_prob=0"])
    assert unlabeled_per_batch(0.25, 8) == 2 and unlabeled_per_batch(0.01, 8) == 1 and unlabeled_per_batch(0, 8) == 0
    ds = training_dataset(paths, np.eye(4, 3, dtype=np.float32), np.array([4.0, 1.0, 6.0, 3.0]), cfg, repeat=True,
                          unlabeled=(upaths, np.array([5.0, 2.0]), None))
    for x, y in ds.take(3):
        flag = y["labelled"].numpy()
        assert x.shape[0] == 8 and (flag == 0).sum() == 2
        np.testing.assert_array_equal(y["labels"].numpy()[flag == 0], 0)  # no labels for them


def test_resample_to_a_teachers_rate():
    t = np.arange(16000) / 16000
    x = np.sin(2 * np.pi * 440 * t)[None].astype(np.float32)
    y = resample(tf.constant(x), 16000, 22050).numpy()
    assert y.shape == (1, 22050)
    t2 = np.arange(22050) / 22050
    np.testing.assert_allclose(y[0, 100:-100], np.sin(2 * np.pi * 440 * t2)[100:-100], atol=2e-2)
    assert resample(tf.constant(x), 16000, 16000) is not None


# ----------------------------------------------------------------- bad teachers
def test_bad_teachers_are_refused_with_their_reason(tmp_path, trained_synthetic):
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "notes.txt").write_text("x")
    with pytest.raises(BirdnetError, match="neither a birdnet-tf run .* nor an export"):
        teacher_kind(tmp_path / "neither")
    with pytest.raises(BirdnetError, match="does not exist"):
        teacher_kind(tmp_path / "nothing")
    assert teacher_kind(trained_synthetic.run) == "run" and teacher_kind(trained_synthetic.export) == "export"
    (tmp_path / "analyzer" / "sub").mkdir(parents=True)  # BirdNET-Analyzer's one result file per recording
    (tmp_path / "analyzer" / "sub" / "XC1.BirdNET.selection.table.txt").write_text("Selection\n")
    assert teacher_kind(tmp_path / "analyzer") == "table" and teacher_kind(tmp_path / "neither" / "notes.txt") == "table"
    from birdnet_tf.distill.teachers import map_labels

    columns, known = map_labels(["Vireo_latimeri", "Setophaga  Adelaidae"], ["setophaga adelaidae", "X y",
                                                                            "Vireo latimeri"], "t")
    assert list(columns[known > 0]) == [1, 0] and list(known) == [1, 0, 1]
    with pytest.raises(BirdnetError, match="share none with the student"):
        load_model_teacher(trained_synthetic.run, ["Setophaga adelaidae", "Vireo latimeri"], log=lambda m: None)
    rc, out, err = run_cli(["train", "--data", str(trained_synthetic.data), "--out", str(tmp_path / "r"),
                            "--teacher", str(tmp_path / "neither"), *tiny_set_args()])
    assert rc == 2 and "neither a birdnet-tf run" in err and not (tmp_path / "r").exists()


# --------------------------------------------------- model teachers: run, export, rate, resume
def test_run_with_model_teachers_at_another_rate_resumes(tmp_path, trained_synthetic, monkeypatch):
    from birdnet_tf.evaluate.run import evaluate_run
    from birdnet_tf.models.build import load_keras_model
    from birdnet_tf.train import trainer

    (tmp_path / "weights.json").write_text(json.dumps({"weights": {str(trained_synthetic.run): 1.0,
                                                                   str(trained_synthetic.export): 3.0}}))
    # the student at 16 kHz; both teachers (a run and its export) at 22.05 kHz, weighted 1:3
    cfg = Config().replace(TINY_SETTINGS + [
        "train.epochs=2", "train.steps_per_epoch=1", "audio.sample_rate_hz=16000", "frontend.fmax_hz=7000", "data.excerpt_s=2.5",
        "data.eval_hop_s=2.5", "model.output_activation=sigmoid", "train.loss=bce", "augment.mixup_prob=0.5",
        f"distill.teachers={trained_synthetic.run},{trained_synthetic.export}",
        f"distill.weights={tmp_path / 'weights.json'}"])
    run = tmp_path / "run"
    resume_normally = interrupt_training_at_epoch_2(monkeypatch)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, trained_synthetic.data, run, workers=1, evaluate=False, log=logs.append)
    assert any("(run, 22050 Hz)" in str(m) for m in logs) and any("(export, 22050 Hz)" in str(m) for m in logs)
    assert any("weights [0.25, 0.75]" in str(m) for m in logs)
    saved = json.loads((run / "config.json").read_text())["distill"]
    assert saved["teachers"] == [str(trained_synthetic.run.resolve()), str(trained_synthetic.export.resolve())]
    last = load_keras_model(run / "checkpoints" / "last.keras")  # the plain student, with its optimizer
    assert last.name == "ismir2016" and int(last.optimizer.iterations.numpy()) > 0
    steps = int(last.optimizer.iterations.numpy())
    resume_normally()
    logs = []
    summary = trainer.train(cfg, trained_synthetic.data, run, workers=1, evaluate=False, log=logs.append)
    assert summary["epochs"] == 2 and summary["epochs_run"] == 1 and any("resuming" in str(m) for m in logs)
    assert int(load_keras_model(run / "checkpoints" / "last.keras").optimizer.iterations.numpy()) == 2 * steps
    report = evaluate_run(run, log=lambda m: None)
    agreed = report["teacher_agreement"]
    assert agreed["windows"] > 0 and 0 <= agreed["top1_agreement"] <= 1 and agreed["mean_abs_diff"] >= 0
    # the student is an ordinary run: it exports (verified against the Keras model) as any other
    from birdnet_tf.export import ExportedModel, export_run

    export_run(run, tmp_path / "export", log=lambda m: None)
    scores = ExportedModel(tmp_path / "export")(np.zeros((1, 40000), np.float32))
    assert scores.shape == (1, 3) and np.all((scores >= 0) & (scores <= 1))


# ---------------------------------------------------------- born-again generations
def test_two_tiny_born_again_generations_with_pseudo_labels(tmp_path, trained_synthetic):
    out = tmp_path / "gens"
    argv = ["distill", "--data", str(trained_synthetic.data), "--out", str(out), "--generations", "2",
            "--unlabeled", str(trained_synthetic.data / "noise6k"), "--no-eval",
            *tiny_set_args(["model.output_activation=sigmoid", "train.loss=bce", "distill.pseudo_min_confidence=0",
                           "train.steps_per_epoch=1", "data.max_eval_windows=1"])]
    rc, stdout, err = run_cli(argv)
    assert rc == 0, err + stdout[-3000:]
    table = (out / "generations.csv").read_text().splitlines()
    assert table[0].startswith("generation,") and len(table) == 3 and "val_mrr" in table[0]
    gen1 = json.loads((out / "gen-1" / "config.json").read_text())["distill"]
    assert gen1["teachers"] == [str((out / "gen-0").resolve())]
    assert gen1["unlabeled"] == [str((trained_synthetic.data / "noise6k").resolve())]
    assert json.loads((out / "gen-0" / "config.json").read_text())["distill"]["unlabeled"] == []
    assert "pseudo-labels: 4 unlabelled recordings, 1 of every 4 excerpts" in stdout
    rc, stdout, err = run_cli(argv)  # resumable: finished generations are skipped
    assert rc == 0 and stdout.count("training already finished") == 2


# ------------------------------------------------------------ real recordings
def test_student_on_real_recordings_agrees_with_its_teacher_above_chance(tmp_path, real_subset):
    """A teacher table (a birdnet-tf window CSV read by the real table reader) whose windows favour
    each file's species; a sigmoid student trained on it alone (alpha 1) agrees with it above chance."""
    import pandas as pd

    from birdnet_tf.evaluate.run import evaluate_run
    from birdnet_tf.train.trainer import train

    data = real_subset()
    meta = pd.read_csv(data / "metadata.csv", dtype=str, keep_default_na=False)
    species = sorted(set(meta["primary_label"]))
    rows = []
    for f, sp in zip(meta["filename"], meta["primary_label"]):
        for k in range(6):
            rows.append({"file": f, "start_s": 3.0 * k, "end_s": 3.0 * k + 3.0,
                         **{label: 0.9 if label == sp else 0.05 for label in species}})
    pd.DataFrame(rows).to_csv(tmp_path / "birdnet.csv", index=False)
    cfg = Config().replace(TINY_SETTINGS + [
        "train.epochs=10", "model.output_activation=sigmoid", "train.loss=bce", "distill.alpha=1.0",
        "data.max_excerpts_per_file=2", "train.learning_rate=0.01", f"distill.teachers={tmp_path / 'birdnet.csv'}"])
    run = tmp_path / "run"
    train(cfg, data, run, workers=1, evaluate=False, log=lambda m: None)
    agreed = evaluate_run(run, split="train", log=lambda m: None)["teacher_agreement"]
    assert len(species) == 3 and agreed["chance"] == pytest.approx(1 / 3)
    print("agreement on real recordings:", agreed)
    assert agreed["top1_agreement"] > agreed["chance"], agreed


def test_sigmoid_student_is_taught_absence_by_window_scores():
    """A noise-only excerpt that a complete table scores low gets a low target at alpha 1 (its file's label
    does not push it up), and the loss pulls the sigmoid student's score down."""
    table = table_of(["a", "b"], ["f.wav"], [(0, 0.0, 3.0), (0, 3.0, 6.0)], [[0.95, 0.0], [0.02, 0.01]],
                     [[1, 1], [1, 1]])
    pooled = TableTargets([table], ["f.wav"], ["/x/f.wav"], log=lambda m: None)
    label = tf.constant([1.0, 0.0])
    silent = pooled.pool(0, 3.0, 6.0, label)[0]  # the excerpt over the silent window
    target = soft_target(label[None], silent[None, :, 0], silent[None, :, 1], 1.0)
    np.testing.assert_allclose(target.numpy(), [[0.02, 0.01]], atol=1e-6)
    logits = tf.Variable([[2.0, -1.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(distill_loss(target, tf.sigmoid(logits), "sigmoid"))
    assert tape.gradient(loss, logits).numpy()[0, 0] > 0  # gradient descent lowers the "a" score
    target = soft_target(label[None], silent[None, :, 0], silent[None, :, 1], 0.5)  # half label: 0.51
    np.testing.assert_allclose(target.numpy(), [[0.51, 0.005]], atol=1e-6)


def test_pseudo_labels_with_bucketed_excerpts_are_refused_before_anything_is_written(tmp_path):
    from birdnet_tf.distill.setup import check_distill_config

    table = tmp_path / "t.csv"
    table.write_text("file,start_s,end_s,a\nf.wav,0,3,0.5\n")
    cfg = Config().replace([f"distill.teachers={table}", f"distill.unlabeled={tmp_path}",
                            "data.excerpt_s=3", "data.excerpt_max_s=6"])
    with pytest.raises(ConfigError, match="fixed-length excerpts"):
        check_distill_config(cfg)
    check_distill_config(cfg.replace(["data.excerpt_max_s=0"]))  # fixed-length: accepted
