"""``birdnet-tf extract``: the 2018 baseline's spectrogram chunks of a dataset, written as PNGs.

Every recording is decoded, cut into chunks (:mod:`birdnet_tf.frontend.chunks`), its chunk
spectrograms scored by the signal/noise rule (:mod:`birdnet_tf.frontend.signal_noise`) and
written in the chunk-folder format (:mod:`birdnet_tf.data.chunk_folder`): chunks scoring at
least ``signal_threshold`` under ``<split>/<label>/``, a seeded share of the others under
``noise/``, ``chunks.csv`` indexing them. The job runs in the runner shared with ``prepare``
(:func:`birdnet_tf.data.jobs.run_jobs`): parallel, resumable per file through done markers,
and a bad file is skipped, warned about and counted. Settings in
:class:`~birdnet_tf.config.ChunkConfig` (config section ``chunks``); REFERENCE §1.

TensorFlow is imported lazily, inside the worker functions: the parent process forks its
workers without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdnet_tf.config import ChunkConfig
from birdnet_tf.data.chunk_folder import (
    CONFIG_NAME,
    INDEX_COLUMNS,
    INDEX_NAME,
    NOISE_DIR,
    REPORT_NAME,
    extraction_settings,
    key_hash,
    part_path,
    read_part,
    safe_name,
    score_x1e4,
    write_chunk_png,
)
from birdnet_tf.data.jobs import check_workers, failure_reason, one_line, run_jobs
from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import quiet_tensorflow, write_json_atomic, write_text_atomic
from birdnet_tf.frontend.chunks import (
    chunk_config,
    check_chunk_config,
    chunk_starts,
    compiled_chunk_spectrogram,
    cut_at,
    spec_params,
)
from birdnet_tf.frontend.signal_noise import signal_noise_score

__all__ = ["ExtractResult", "extract"]

#: Chunks per TF call inside one file (bounds memory: ~70 MB of frames at the defaults).
_BATCH_CHUNKS = 64


@dataclass
class _Job:
    """One recording of an extract job."""

    key: str
    path: str
    label: str
    secondary: str
    split: str
    stem: str


@dataclass
class ExtractResult:
    """What an :func:`extract` run produced (counts over the whole folder, earlier runs included).

    Attributes:
        out_dir: The output folder.
        files: Recordings in the dataset.
        processed: Files extracted in this run.
        skipped: Files finished by an earlier run (kept as they are).
        failed: ``(key, source_path, reason)`` for each file that failed (one-line reasons).
        chunks: Chunks cut from the finished files.
        kept: Chunks scoring at least ``signal_threshold`` (written under ``<split>/<label>/``).
        rejected: The other chunks.
        noise_saved: Rejected chunks written to ``noise/``.
        too_short: Finished files shorter than ``min_chunk_s`` (no chunks).
        index_path: ``chunks.csv``.
        elapsed_s: Wall-clock time of the run in seconds.
    """

    out_dir: Path
    files: int = 0
    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    chunks: int = 0
    kept: int = 0
    rejected: int = 0
    noise_saved: int = 0
    too_short: int = 0
    index_path: Path | None = None
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """Multi-line account of the run: counts, then one line per failure."""
        lines = [
            f"extract: {self.files} files -> {self.out_dir}, {self.elapsed_s:.1f} s",
            f"  {self.processed} extracted, {self.skipped} already done (kept), {len(self.failed)} failed"
            + (f", {self.too_short} shorter than one chunk" if self.too_short else ""),
            f"  {self.chunks} chunks: {self.kept} kept (signal), {self.rejected} rejected, "
            f"{self.noise_saved} saved to {NOISE_DIR}/",
        ]
        for key, src, reason in self.failed:
            lines.append(f"    {key} ({src}): {reason}")
        if self.index_path is not None:
            lines.append(f"  index: {self.index_path}")
        return "\n".join(lines)


def _worker_init(threads: int) -> None:
    """Runs once in each worker process: TensorFlow quiet and using its share of the cores."""
    quiet_tensorflow()  # imports TensorFlow without its start-up chatter
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialised (in-process use)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def _extract_one(job: _Job, out_dir: str, cfg: ChunkConfig, seed: int) -> tuple[dict | None, str | None, list[str]]:
    """Extracts one recording; runs in a worker process.

    Writes the file's PNGs, then its done marker ``.parts/<hash>.json`` (rows and
    counts), both atomically.

    Returns:
        ``(part, error, warnings)``: the marker's content (``None`` on failure),
        a one-line error (``None`` on success) and warning texts to re-issue.
    """
    from birdnet_tf.data.audio import load_audio

    out = Path(out_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            audio, _ = load_audio(job.path, cfg.sample_rate_hz)
            starts = chunk_starts(audio.size, cfg)  # cut per batch: a long file never holds all its chunks
            fn = compiled_chunk_spectrogram(cfg)
            rng = np.random.default_rng([int(seed), int(key_hash(job.key)[:12], 16)])
            rows, kept, rejected, noise = [], 0, 0, 0
            cells = cfg.width * cfg.height
            for b0 in range(0, len(starts), _BATCH_CHUNKS):
                imgs = fn(cut_at(audio, starts[b0:b0 + _BATCH_CHUNKS], spec_params(cfg).chunk_samples)).numpy()
                scores = [signal_noise_score(img) for img in imgs]  # = signal_noise_score_tf, 2.5x cheaper here
                for img, score, start in zip(imgs, scores, starts[b0:b0 + _BATCH_CHUNKS]):
                    start_s = int(start) / cfg.sample_rate_hz
                    name = f"{job.stem}_{int(start) * 1000 // cfg.sample_rate_hz}_{score_x1e4(score, cells)}.png"
                    save_noise = False
                    if score >= cfg.signal_threshold:
                        kind, rel = "signal", f"{job.split}/{safe_name(job.label)}/{name}"
                        kept += 1
                    else:
                        rejected += 1
                        save_noise = bool(rng.random() < cfg.noise_fraction)  # one draw per rejected chunk
                        kind, rel = "noise", f"{NOISE_DIR}/{name}"
                    if kind == "signal" or save_noise:
                        write_chunk_png(out / rel, img)
                        noise += kind == "noise"
                        rows.append({"png": rel, "source_key": job.key, "label": job.label,
                                     "secondary_labels": job.secondary, "split": job.split,
                                     "start_s": round(start_s, 6), "score": float(score), "kind": kind})
            part = {"key": job.key, "chunks": int(len(starts)), "kept": kept, "rejected": rejected,
                    "noise_saved": noise, "rows": rows}
            write_json_atomic(part_path(out, job.key), part)
            result: tuple[dict | None, str | None] = (part, None)
        except Exception as e:  # noqa: BLE001 - one file must never stop the job
            result = (None, failure_reason(e, job.path))
    return result[0], result[1], [one_line(w.message) for w in caught]


def _check_folder(out_dir: Path, cfg: ChunkConfig, seed: int) -> None:
    """Refuses a folder made by another config, or a non-empty folder that extract did not make."""
    cfg_path = out_dir / CONFIG_NAME
    if cfg_path.is_file():
        try:
            saved = json.loads(cfg_path.read_text(encoding="utf-8"))
            old = extraction_settings(chunk_config(saved["chunks"]), saved.get("seed", 0))
        except (OSError, ValueError, KeyError, TypeError, BirdnetError) as e:
            raise BirdnetError(f"{cfg_path}: unreadable extract config ({one_line(e)}); "
                               "delete the folder or choose another --out") from None
        new = extraction_settings(cfg, seed)
        diff = [f"{'chunks.' if k != 'seed' else ''}{k} = {old[k]!r} there, {new[k]!r} now"
                for k in new if json.dumps(old.get(k)) != json.dumps(new[k])]
        if diff:
            raise BirdnetError(f"{out_dir}: was extracted with other settings ({'; '.join(diff)}); "
                               "choose another output folder or the same settings")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise BirdnetError(f"{out_dir}: exists, is not empty and holds no {CONFIG_NAME}; "
                           "choose a new or empty output folder")



def _plan(catalog, source: Path, out_dir: Path) -> list[_Job]:
    from collections import Counter

    import pandas as pd

    src = source.resolve()
    out_r = out_dir.resolve()
    if out_r == src or out_r.is_relative_to(src):
        raise BirdnetError(f"{out_dir}: the output folder must not be inside the dataset folder {source}")
    keys = [str(k) for k in catalog["key"]]
    stems = [Path(k).stem for k in keys]
    repeated = {s for s, n in Counter(stems).items() if n > 1}
    has_split = "split" in catalog.columns
    jobs = []
    for i, row in enumerate(catalog.to_dict("records")):
        split = row.get("split") if has_split else None
        split = "all" if split is None or split is pd.NA or not str(split).strip() else safe_name(str(split).lower())
        if split == NOISE_DIR:
            raise BirdnetError(f"{source}: split value '{row.get('split')}' of {keys[i]} clashes with the "
                               f"{NOISE_DIR}/ folder of rejected chunks; rename that split")
        stem = stems[i] if stems[i] not in repeated else f"{stems[i]}-{key_hash(keys[i])[:8]}"
        secondary = row.get("secondary_labels") or []
        jobs.append(_Job(key=keys[i], path=str(row["path"]), label=str(row["primary_label"]),
                         secondary=";".join(map(str, secondary)), split=split, stem=safe_name(stem)))
    return jobs



def _write_index(out_dir: Path, jobs: list[_Job], parts: dict[str, dict]) -> Path:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for job in jobs:
        for row in parts.get(job.key, {}).get("rows", []):
            writer.writerow({c: row[c] for c in INDEX_COLUMNS})
    return write_text_atomic(out_dir / INDEX_NAME, buf.getvalue())


def extract(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: ChunkConfig,
    *,
    workers: int = 2,
    progress: bool = True,
    seed: int = 0,
    log: Callable[[str], Any] = print,
) -> ExtractResult:
    """Cuts every recording of a dataset into chunks and writes the baseline's PNG spectrograms.

    For each recording of ``source`` (:func:`~birdnet_tf.data.catalog.load_catalog`;
    a ``split`` column, as ``birdnet-tf sort`` writes, is kept): decode at
    ``cfg.sample_rate_hz``, cut chunks, compute their spectrograms
    (:func:`~birdnet_tf.frontend.chunks.chunk_spectrogram`, TF ops, 64 chunks per call: 3.7 ms of CPU per chunk
    against 4.9 ms for the same steps in NumPy) and signal/noise scores
    (:func:`~birdnet_tf.frontend.signal_noise.signal_noise_score`, NumPy + OpenCV: 1.4 ms of
    CPU per chunk against 3.5 ms for :func:`~birdnet_tf.frontend.signal_noise.signal_noise_score_tf`, which gives the same scores; one
    thread each, measured on the 2-core development machine); chunks scoring at least
    ``cfg.signal_threshold`` go to ``<split>/<label>/``, about
    ``cfg.noise_fraction`` of the others (seeded per file, independent of the
    order of processing) to ``noise/``; names and files as in
    :mod:`birdnet_tf.data.chunk_folder`. Resumable: a file whose done marker exists (with all its PNGs) is
    skipped; an interrupted file is redone (its PNGs get the same names). A file
    that fails is recorded and warned about; the rest go on. ``chunks.csv`` is
    rewritten at the end from the markers of the dataset's files.

    Args:
        source: Dataset folder (``metadata.csv`` or one folder per class).
        out_dir: Output folder: new, empty, or made by an earlier run with the
            same settings.
        cfg: The chunk settings (``Config.chunks``). ``s2n_interval`` and
            ``max_chunks_per_file`` do not affect extraction and may differ on a rerun.
        workers: Worker processes; 1 extracts in this process (see
            :func:`birdnet_tf.data.jobs.pool_context` for fork vs spawn).
        progress: Show a tqdm progress bar (on a terminal).
        seed: Seed of the noise selection (saved with the settings).
        log: Receives the summary at the end.

    Returns:
        The :class:`ExtractResult`; also written as ``extract_report.json``.

    Raises:
        BirdnetError: Unusable settings, an unreadable dataset, an output folder
            made with other settings or not by extract, or inside the dataset;
            or no file could be extracted at all.
    """
    from birdnet_tf import __version__
    from birdnet_tf.data.catalog import load_catalog

    t0 = time.monotonic()
    check_chunk_config(cfg)
    workers = check_workers(workers)
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BirdnetError(f"{out_dir}: output folder exists but is not a folder")
    catalog = load_catalog(source)
    jobs = _plan(catalog.sort_values("key", kind="stable"), source, out_dir)
    _check_folder(out_dir, cfg, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / CONFIG_NAME).is_file():
        write_json_atomic(out_dir / CONFIG_NAME, {"birdnet_tf_version": __version__, "seed": int(seed),
                                                   "source": str(source), "chunks": dataclasses.asdict(cfg)})

    result = ExtractResult(out_dir=out_dir, files=len(jobs))
    parts: dict[str, dict] = {}

    def on_done(job: _Job, part: dict, fresh: bool) -> None:
        parts[job.key] = part
        if fresh:
            result.processed += 1
        else:
            result.skipped += 1

    def on_failed(job: _Job, reason: str) -> None:
        result.failed.append((job.key, job.path, reason))

    try:
        run_jobs(jobs, _extract_one, lambda job: (job, str(out_dir), cfg, seed), name="extract", workers=workers,
                 on_done=on_done, on_failed=on_failed, done_before=lambda job: read_part(out_dir, job.key),
                 progress=progress, worker_setup=_worker_init,
                 before_in_process=quiet_tensorflow)  # imports TensorFlow here without its start-up chatter
    finally:
        result.failed.sort()
        for part in parts.values():
            result.chunks += int(part["chunks"])
            result.kept += int(part["kept"])
            result.rejected += int(part["rejected"])
            result.noise_saved += int(part["noise_saved"])
            result.too_short += int(part["chunks"]) == 0
        result.elapsed_s = time.monotonic() - t0
        with contextlib.suppress(OSError):
            result.index_path = _write_index(out_dir, jobs, parts)
            _write_report(result)
    log(result.summary())
    if jobs and not parts:
        raise BirdnetError(f"{source}: none of its {len(jobs)} recordings could be extracted "
                           f"(reasons above and in {out_dir / REPORT_NAME})")
    return result


def _write_report(result: ExtractResult) -> None:
    write_json_atomic(result.out_dir / REPORT_NAME, {
        "files": result.files,
        "processed": result.processed,
        "skipped": result.skipped,
        "failed_count": len(result.failed),
        "failed": [{"key": k, "source": s, "reason": r} for k, s, r in result.failed],
        "too_short": result.too_short,
        "chunks": result.chunks,
        "kept": result.kept,
        "rejected": result.rejected,
        "noise_saved": result.noise_saved,
        "elapsed_s": round(result.elapsed_s, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
