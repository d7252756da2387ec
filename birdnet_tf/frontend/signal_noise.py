"""The 2018 baseline's signal/noise rule: how much of a chunk spectrogram is "signal".

**Signal/noise rule** (:func:`signal_noise_score` in NumPy + OpenCV,
:func:`signal_noise_score_tf` in TF ops on a batch; equal results): zero every cell
below 1.25 × its image row's median (the median over time of its frequency band) or
below 1.15 × its image column's median (the median over frequency of its frame), both
medians taken of the unmodified image; set the non-zero cells to 1; a 3 × 3 median
blur (OpenCV ``medianBlur``, replicated border); a morphological closing with a 3 × 3
square of ones (OpenCV ``morphologyEx(MORPH_CLOSE)``: dilation then erosion, pixels
outside the image ignored); the score is the mean of the result, the share of
"signal" cells in 0..1. The seed text gives neither the kernel of the closing nor
the median conventions; the 3 × 3 square and ``np.median`` (the mean of the two
middle values for an even count) are this package's choice.

Scores are of the images of :func:`birdnet_tf.frontend.chunks.chunk_spectrogram`.
TensorFlow and OpenCV are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COLUMN_FACTOR", "ROW_FACTOR", "signal_noise_score", "signal_noise_score_tf"]

#: The rule's factors: a cell must reach these multiples of its row and column medians.
ROW_FACTOR = 1.25
COLUMN_FACTOR = 1.15


def signal_noise_score(img: np.ndarray) -> float:
    """The baseline's signal/noise score of one spectrogram, NumPy + OpenCV.

    REFERENCE §1: zero every cell below 1.25 × its row median or below 1.15 ×
    its column median (an image *row* is one frequency band, its median taken
    over time; a *column* is one frame, its median over frequency; both medians
    of the unmodified image, ``np.median``); binarise (non-zero → 1); 3 × 3
    median blur (``cv2.medianBlur``, replicated border); morphological closing
    with a 3 × 3 square of ones (``cv2.morphologyEx(MORPH_CLOSE)``, default
    border: pixels outside the image never win the max or the min); mean.

    Args:
        img: ``[width, height]`` spectrogram in 0..1 (time × frequency, as
            :func:`chunk_spectrogram` returns; the rule is the same for the
            transposed or flipped image).

    Returns:
        The share of signal cells, in 0..1 (the float32 quotient
        ``count / cells``, identical to :func:`signal_noise_score_tf`).
    """
    import cv2

    x = np.asarray(img, np.float32)
    if x.ndim != 2:
        raise ValueError(f"signal_noise_score expects a [width, height] image, got shape {x.shape}")
    spec = x.copy()
    row_median = np.median(x, axis=0, keepdims=True)  # per frequency band, over time
    column_median = np.median(x, axis=1, keepdims=True)  # per frame, over frequency
    spec[x < row_median * np.float32(ROW_FACTOR)] = 0.0
    spec[x < column_median * np.float32(COLUMN_FACTOR)] = 0.0
    spec[spec > 0] = 1.0
    spec = cv2.medianBlur(spec, 3)
    spec = cv2.morphologyEx(spec, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return float(np.float32(np.count_nonzero(spec)) / np.float32(spec.size))


def _median_tf(x, axis: int):
    """``np.median(x, axis, keepdims=True)`` in TF ops: the mean of the two middle values for an even count."""
    import tensorflow as tf

    n = tf.shape(x)[axis]
    s = tf.sort(x, axis=axis)
    lo = tf.gather(s, [(n - 1) // 2], axis=axis)
    hi = tf.gather(s, [n // 2], axis=axis)
    return (lo + hi) / 2.0


def signal_noise_score_tf(images):
    """The signal/noise rule of :func:`signal_noise_score` on a batch, in TF ops.

    Medians via ``tf.sort``. The 3 × 3 median blur of a binary image is the
    majority (≥ 5) of the 9 cells of the neighbourhood, the image padded by
    repeating its edge (OpenCV's replicated border); the closing is a 3 × 3
    dilation (logical or) then erosion (logical and), padded with false and true
    respectively so that, as with OpenCV's default morphology border, a pixel
    outside the image never decides. All three 3 × 3 operations are computed
    separably (rows, then columns), which is exact for them. Usable in a
    ``tf.data`` map and inside a model.

    Args:
        images: float32 ``[batch, width, height]`` spectrograms.

    Returns:
        float32 ``[batch]`` scores in 0..1, equal to :func:`signal_noise_score`
        on each image (the same float32 comparisons on the same values, and the
        same ``count / cells`` quotient).
    """
    import tensorflow as tf

    def window3(x, reduce):
        """``reduce`` over each cell's 3 × 3 neighbourhood of ``x`` padded by one on both axes."""
        x = reduce(reduce(x[:, :-2], x[:, 1:-1]), x[:, 2:])
        return reduce(reduce(x[:, :, :-2], x[:, :, 1:-1]), x[:, :, 2:])

    x = tf.cast(tf.convert_to_tensor(images), tf.float32)
    row_median = _median_tf(x, axis=1)  # [b, 1, height]: per band over time
    column_median = _median_tf(x, axis=2)  # [b, width, 1]: per frame over frequency
    keep = (x >= row_median * ROW_FACTOR) & (x >= column_median * COLUMN_FACTOR) & (x > 0)
    edges = [[0, 0], [1, 1], [1, 1]]
    votes = window3(tf.pad(tf.cast(keep, tf.float32), edges, mode="SYMMETRIC"), tf.add)  # 1-pixel = replicate
    blurred = votes >= 5.0
    dilated = window3(tf.pad(blurred, edges, constant_values=False), tf.logical_or)
    closed = window3(tf.pad(dilated, edges, constant_values=True), tf.logical_and)
    count = tf.reduce_sum(tf.cast(closed, tf.float32), axis=[1, 2])
    cells = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
    return count / cells

