"""The contract between teacher-table readers and training: per-window scores of a teacher,
already mapped onto the student's label order.

Readers (BirdNET-Analyzer CSV, Raven selection tables, birdnet-tf's own ``predict --window-s``
CSV, ``birdnet-tf teacher birdnet`` output) all return a :class:`TeacherTable`; the training
side turns it into per-excerpt targets. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TeacherTable:
    """Per-window teacher scores on a student's labels.

    Attributes:
        labels: The student's labels; column ``c`` of ``scores``/``known`` is ``labels[c]``.
        files: The audio files as the table names them (path or bare name), one entry per file.
        file_index: int64 ``[W]``: row ``w`` belongs to ``files[file_index[w]]``.
        start_s: float64 ``[W]``: window start in seconds.
        end_s: float64 ``[W]``: window end in seconds.
        scores: float32 ``[W, C]``: the teacher's score (0..1) of class ``c`` in window ``w``;
            0 where not ``known``.
        known: bool ``[W, C]``: whether the table holds a score for that cell. A class the
            teacher does not know (no mapped species) is never known; in a complete table every
            mapped class is known in every window; in a thresholded table (detections only)
            only the cells that were written are known.
        complete: Whether the table has every mapped class in every window (no confidence
            threshold): then a missing cell would be a real zero, and ``known`` is True for every
            mapped class.
        source: Where the table came from (path and format), for messages.
    """

    labels: list[str]
    files: list[str]
    file_index: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    scores: np.ndarray
    known: np.ndarray
    complete: bool
    source: str

    @property
    def class_known(self) -> np.ndarray:
        """bool ``[C]``: student classes for which the table holds any score."""
        return self.known.any(axis=0) if len(self.known) else np.zeros(len(self.labels), bool)
