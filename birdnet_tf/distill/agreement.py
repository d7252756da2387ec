"""How far a student agrees with its teachers on the validation windows (``evaluate`` of a distilled run)."""

from __future__ import annotations

import numpy as np

from birdnet_tf.errors import BirdnetError


def teacher_window_scores(cfg, labels, rows, windows, log=print) -> tuple[np.ndarray, np.ndarray]:
    """The run's teachers' combined scores on evaluation ``windows`` of ``rows`` (split.csv rows).

    Model teachers score each window's waveform (resampled to their rate); tables are pooled over
    the window's span as in training. Returns ``(scores [W, C], mask [W, C])`` (mask: some teacher knows).
    """
    import tensorflow as tf

    from birdnet_tf.distill.setup import load_teachers
    from birdnet_tf.distill.targets import TableTargets
    from birdnet_tf.distill.teachers import combine_teachers, resample

    teachers = load_teachers(cfg, list(labels), log)
    n_w, n_c = len(windows.file_index), len(labels)
    parts_s, parts_k = [], []
    if teachers.tables:
        pooled = TableTargets(teachers.tables, list(rows["key"]), list(rows["wav_path"]), cfg.distill.temperature,
                              log)
        length = float(cfg.data.excerpt_s)
        zeros = tf.zeros([n_c])
        out = np.stack([pooled.pool(int(f), float(s), float(s) + length, zeros).numpy()
                        for f, s in zip(windows.file_index, windows.start_s)]) if n_w else np.zeros((0, 1, n_c, 2))
        parts_s.append(out[..., 0])
        parts_k.append(out[..., 1])
    if teachers.models:
        per = [[] for _ in teachers.models]
        for batch in windows.dataset:
            x = batch["waveform"] if isinstance(batch, dict) else batch
            for i, t in enumerate(teachers.models):
                s = t.fn(resample(x, cfg.audio.sample_rate_hz, t.sample_rate_hz))
                per[i].append(np.asarray(s)[:, t.columns])
        for i, t in enumerate(teachers.models):
            parts_s.append(np.concatenate(per[i])[:, None])
            parts_k.append(np.broadcast_to(t.known[None, None], (n_w, 1, n_c)))
    scores, mask = combine_teachers(np.concatenate(parts_s, 1).astype(np.float32),
                                    np.concatenate(parts_k, 1).astype(np.float32), teachers.weights)
    return scores.numpy(), mask.numpy()


def agreement(student: np.ndarray, teacher: np.ndarray, mask: np.ndarray) -> dict:
    """Top-1 agreement (over the classes the teachers know; windows where they know any) and the mean
    absolute score difference on known cells; ``chance`` is the top-1 agreement of a random guess."""
    known = mask > 0
    rows = known.any(axis=1)
    if not rows.any():
        return {"windows": 0, "top1_agreement": None, "mean_abs_diff": None, "chance": None}
    s = np.where(known, student, -np.inf)[rows]
    t = np.where(known, teacher, -np.inf)[rows]
    top1 = float(np.mean(np.argmax(s, axis=1) == np.argmax(t, axis=1)))
    diff = float(np.abs(student - teacher)[known].mean())
    return {"windows": int(rows.sum()), "top1_agreement": top1, "mean_abs_diff": diff,
            "chance": float(np.mean(1.0 / known[rows].sum(axis=1)))}


def run_agreement(cfg, labels, rows, windows, student_scores: np.ndarray, log=print) -> dict | None:
    """:func:`agreement` of a run with teachers (None without teachers, or when they cannot be loaded: warned)."""
    if not cfg.distill.teachers:
        return None
    try:
        teacher, mask = teacher_window_scores(cfg, labels, rows, windows, log)
    except BirdnetError as e:
        log(f"warning: no agreement with the teachers: {e}")
        return None
    out = agreement(student_scores, teacher, mask)
    if out["windows"]:
        log(f"agreement with the teachers on {out['windows']} windows: top-1 {out['top1_agreement']:.3f} "
            f"(chance {out['chance']:.3f}), mean |student − teacher| {out['mean_abs_diff']:.3f}")
    return out
