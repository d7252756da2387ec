"""Ensemble members: export folders loaded as :class:`~birdnet_tf.infer.engine.Scorer` s.

:func:`load_members` loads each export with the engine asked for (``whole``: the
streaming :class:`~birdnet_tf.infer.whole.WholeRecordingModel`, falling back to sliding
windows for an export without whole-recording signatures; ``sliding``:
:class:`~birdnet_tf.infer.sliding.SlidingScorer`) and checks that they predict the same
classes (in any order) at one sample rate. ``birdnet-tf submit`` averages their window
scores with an :class:`~birdnet_tf.infer.engine.EnsembleScorer`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdnet_tf.errors import BirdnetError
from birdnet_tf.infer.engine import Scorer, label_order

ENGINES: tuple[str, ...] = ("whole", "sliding")
"""Scoring engines of an export: one pass over the recording, or window by window."""


@dataclass
class Member:
    """One model of an ensemble: its export, the scorer that runs it and ``order``, the indices
    that put its score columns into the ensemble's label order."""

    path: Path
    exported: object
    scorer: Scorer
    order: np.ndarray

    @property
    def whole(self):
        """The whole-recording engine, or None when the member scores sliding windows."""
        from birdnet_tf.infer.whole import WholeRecordingModel

        return self.scorer if isinstance(self.scorer, WholeRecordingModel) else None


def export_scorer(exported, engine: str = "whole", log=print, batch_size: int = 32) -> Scorer:
    """A scorer of a loaded export: ``whole`` where it has the signatures (else sliding, with a warning)."""
    from birdnet_tf.infer.sliding import SlidingScorer

    if engine not in ENGINES:
        raise BirdnetError(f"unknown engine '{engine}'; choose whole or sliding")
    if not exported.uses_waveform:
        log(f"note: {exported.path} is a metadata-only model: it reads no audio, so every window of a file gets the "
            "same scores (from the file's date, time and place)")
    elif engine == "whole":
        from birdnet_tf.infer.whole import WholeRecordingModel

        try:
            return WholeRecordingModel.from_export(exported)
        except BirdnetError as e:
            log(f"warning: {e}; scoring it with sliding windows")
    return SlidingScorer(exported, batch_size)


def load_members(models: Sequence[str | os.PathLike], engine: str = "whole", log=print,
                 batch_size: int = 32) -> tuple[list[Member], list[str]]:
    """Loads export folders as ensemble members; returns ``(members, labels)`` (the first model's order).

    ``batch_size``: windows per call of a sliding-window member.

    Raises:
        BirdnetError: Not an export; a member's classes or sample rate differ from the first's.
    """
    from birdnet_tf.export import ExportedModel

    if engine not in ENGINES:
        raise BirdnetError(f"unknown engine '{engine}'; choose whole or sliding")
    if not models:
        raise BirdnetError("give at least one exported MODEL folder")
    members: list[Member] = []
    labels: list[str] = []
    rate = None
    for i, path in enumerate(Path(m) for m in models):
        exported = ExportedModel(path)
        if len(set(exported.labels)) != len(exported.labels):
            raise BirdnetError(f"{path}: labels.txt repeats a label")
        if i == 0:
            labels, rate, first = list(exported.labels), exported.sample_rate_hz, path
        else:
            if exported.sample_rate_hz != rate:
                raise BirdnetError(f"{path}: takes {exported.sample_rate_hz} Hz audio but {first} takes {rate} Hz; "
                                   "an ensemble needs one sample rate")
            if set(exported.labels) != set(labels):
                missing = sorted(set(labels) - set(exported.labels))
                extra = sorted(set(exported.labels) - set(labels))
                raise BirdnetError(f"{path}: its classes differ from {first}'s (missing {missing[:5]}, "
                                   f"extra {extra[:5]}); an ensemble needs the same classes")
        scorer = export_scorer(exported, engine, log, batch_size)
        members.append(Member(path, exported, scorer, label_order(exported.labels, labels)))
    return members, labels
