"""Pseudo-labels: recordings without labels, scored by the teachers and mixed into training
(``distill.unlabeled``, ``birdnet-tf distill --unlabeled DIR``).

Their audio is prepared like a dataset's (resumable, at the model's rate, into the cache); each
batch then holds ``distill.pseudo_ratio`` of their excerpts (:func:`birdnet_tf.data.pipeline.
unlabeled_per_batch`), taught by the teachers alone on the classes they know, and only when the
teachers' highest score on the excerpt reaches ``distill.pseudo_min_confidence``
(:func:`birdnet_tf.distill.teachers.make_distiller`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from birdnet_tf.errors import BirdnetError


def unlabeled_catalog(folders, sample_rate_hz: int, cache_dir=None, workers: int = 2, progress: bool = False,
                      log=print) -> pd.DataFrame:
    """The audio files under ``folders`` prepared at ``sample_rate_hz``: columns ``key`` (the file's path
    relative to its folder, e.g. ``soundscapes/a.wav`` for folder ``soundscapes``), ``wav_path``, ``duration_s``.

    Files that fail to decode are reported by the preparation and left out.

    Raises:
        BirdnetError: A folder that does not exist or holds no audio file, or nothing decodable.
    """
    from birdnet_tf.data.audio import AUDIO_EXTENSIONS
    from birdnet_tf.data.dataset import cache_dir_for
    from birdnet_tf.data.prepare import prepare

    rows = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise BirdnetError(f"{root}: unlabelled-recordings folder does not exist")
        found = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
        if not found:
            raise BirdnetError(f"{root}: holds no audio file ({', '.join(AUDIO_EXTENSIONS)})")
        out = Path(cache_dir) / f"unlabeled-{root.name}" if cache_dir else cache_dir_for(root, sample_rate_hz)
        result = prepare([(f.relative_to(root).as_posix(), str(f)) for f in found], out, sample_rate_hz,
                         workers=workers, progress=progress)
        log(f"unlabelled recordings: {result.summary()}")
        rows += [{"key": f"{root.name}/{key}", "wav_path": str(wav), "duration_s": float(d)}
                 for key, (wav, d) in sorted(result.done.items())]
    if not rows:
        raise BirdnetError(f"none of the unlabelled recordings in {', '.join(map(str, folders))} could be decoded")
    return pd.DataFrame(rows)
