"""``birdnet-tf submit``: BirdCLEF 2018 run files from one exported model or an ensemble.

What the 2018 baseline's ``submission_monophone.py`` / ``submission_soundscape.py`` did,
from SavedModels (``birdnet-tf export``) instead of pickled Theano nets:

* **monophone** — per recording, up to ``max_windows`` windows (default
  ``chunks.max_chunks_per_file`` = the baseline's ``MAX_SPECS_PER_FILE``, 128, spread
  evenly over long files) of the model's excerpt length (``data.excerpt_s``) every
  ``data.eval_hop_s``; their scores ``[windows, classes]`` are pooled per file (default
  ``median``, the baseline's median-filtered pooling) and written as
  ``MediaId;ClassId;Probability;Rank`` lines, the top 100 classes per file
  (:func:`~birdnet_tf.infer.outputs.write_birdclef_monophone`).
* **soundscape** — 5-s windows every 5 s (``window_s``/``hop_s`` override) written as
  ``MediaId;HH:MM:SS-HH:MM:SS;ClassId;Probability`` lines, the top 100 classes per window
  (:func:`~birdnet_tf.infer.outputs.write_birdclef_soundscape`). Time stamps are the
  nominal windows of the grid (``00:00:05-00:00:10``…) even where the recording ends
  inside the last one; hours grow past ``01`` for long recordings.

**Ensembles.** Several export folders average their *window* scores (as the baseline
averaged its models' chunk predictions) before pooling. Members must predict the same
classes (the same order, or reorderable by name) at the same sample rate; every member
scores the same windows (those of the first model's excerpt and hop unless given).

**Engines.** ``whole`` (default) runs each member's network once over the streamed
recording through the export's ``front``/``body`` signatures and pools windows from its
per-step logits (:class:`~birdnet_tf.infer.whole.WholeRecordingModel`; window starts are
rounded to the model's step grid, 0.129 s by default); a member exported without those
signatures falls back to ``sliding``, which scores each window on its own through
``serving_default`` (the decoded recording is then held in memory).

**Noise class.** A trained class named like one of ``drop_classes`` (case-insensitive,
default ``noise``) is scored and pooled with the others and then left out of the run
file. The remaining scores are *not* renormalised (softmax scores of the species then
sum to less than 1 where the model heard noise), which keeps their ranking and their
comparability across files.

**Ids.** ``MediaId`` comes from ``metadata`` — a BirdCLEF XML folder (one ``<Audio>``
file per recording with ``MediaId`` and ``FileName``; the test sets' XML files have no
species, so this reads them directly, not as a dataset) or a CSV with a media id column
(``media_id``/``MediaId``) and a file name column (``filename``/``FileName``/``file``) —
matched by the audio file's name (or, when unambiguous, its stem); without metadata the
file's stem. ``ClassId`` comes from ``class_ids`` (CSV ``label,class_id``), else from the
first model's ``assets.extra/labels.csv`` (written by training on data with class ids,
e.g. from ``birdnet-tf sort``), else the label itself with a warning (BirdCLEF expects
class ids). Both mappings are checked before any audio is scored.

Unreadable audio is skipped with a warning and counted in the closing summary; an
existing output file is refused unless ``force``; the run file is written atomically.
"""

from __future__ import annotations

import os
import sys
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.errors import AudioDecodeError, BirdnetError

TASKS: tuple[str, ...] = ("monophone", "soundscape")
"""The BirdCLEF 2018 tasks a run file can be written for."""

SOUNDSCAPE_WINDOW_S = 5.0
"""Length (and default hop) of a soundscape window, as BirdCLEF 2018 scores them."""

DEFAULT_POOLING = "median"
"""Monophone per-file pooling: the 2018 baseline's median-filtered pooling."""

DEFAULT_DROP_CLASSES: tuple[str, ...] = ("noise", "Noise")
"""Class names (case-insensitive) left out of run files."""

_MEDIA_ID_COLUMNS = ("media_id", "mediaid")
_FILE_COLUMNS = ("filename", "file_name", "file", "path")
_MIN_WINDOW_S = 0.1  # a last soundscape window starting closer than this to the end is not scored


# --------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------

def soundscape_windows(n_samples: int, sample_rate_hz: int, window_s: float = SOUNDSCAPE_WINDOW_S,
                       hop_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Soundscape windows of a recording: ``(start_s, end_s)``, each ``float64 [windows]``, seconds.

    Windows of ``window_s`` every ``hop_s`` (default ``window_s``) from 0; a last window
    starting less than 0.1 s before the end is dropped (a recording shorter than that
    still gets one). Ends are nominal (``start + window_s``), also past the recording's
    end, so the time stamps stay on the grid.
    """
    if window_s <= 0 or (hop_s is not None and hop_s <= 0):
        raise BirdnetError("soundscape --window-s and --hop-s must be positive")
    hop = int(round((hop_s or window_s) * sample_rate_hz))
    starts = np.arange(0, max(int(n_samples), 1), max(1, hop), dtype=np.int64)
    starts = starts[(starts == 0) | (starts + _MIN_WINDOW_S * sample_rate_hz < n_samples)]
    start_s = starts / float(sample_rate_hz)
    return start_s, start_s + float(window_s)


def monophone_starts(n_samples: int, window: int, hop: int, max_windows: int | None) -> np.ndarray:
    """Start samples of a monophone recording's windows, ``int64 [windows]``.

    Windows of ``window`` samples every ``hop`` (the last aligned to the end), at most
    ``max_windows`` spread evenly (:func:`birdnet_tf.data.pipeline.window_starts`); a
    recording shorter than a window gets one (looped when scored).
    """
    from birdnet_tf.data.pipeline import window_starts

    return window_starts(int(n_samples), int(window), int(hop), max_windows)


# --------------------------------------------------------------------------
# Noise class
# --------------------------------------------------------------------------

def kept_labels(labels: Sequence[str], drop_classes: Iterable[str] | None = DEFAULT_DROP_CLASSES) -> list[str]:
    """``labels`` without those named (case-insensitively) in ``drop_classes``."""
    drop = {str(d).strip().casefold() for d in (drop_classes or ())}
    return [label for label in labels if label.strip().casefold() not in drop]


def drop_noise(table: pd.DataFrame, labels: Sequence[str],
               drop_classes: Iterable[str] | None = DEFAULT_DROP_CLASSES) -> tuple[pd.DataFrame, list[str]]:
    """Removes the columns of dropped classes from a score table; other scores stay as they are.

    Args:
        table: Score table (``file, start_s, end_s`` + one column per label).
        labels: Its label columns, in order.
        drop_classes: Class names to remove (case-insensitive).

    Returns:
        ``(table, kept)``: a copy without the dropped columns (scores *not*
        renormalised) and the kept labels in order.
    """
    kept = kept_labels(labels, drop_classes)
    dropped = [label for label in labels if label not in set(kept)]
    return table.drop(columns=dropped), kept


# --------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------

def _stem_keys(by_name: dict[str, str]) -> dict[str, str]:
    """``{file name: id}`` plus ``{stem: id}`` for stems that belong to one file name only."""
    stems: dict[str, set[str]] = {}
    for name, media in by_name.items():
        stems.setdefault(Path(name).stem, set()).add(media)
    out = dict(by_name)
    for stem, ids in stems.items():
        if len(ids) == 1 and stem not in out:
            out[stem] = next(iter(ids))
    return out


def _add_media_id(by_name: dict[str, str], source: str, filename: str, media: str) -> None:
    name = Path(str(filename).replace("\\", "/")).name
    media = str(media).strip()
    if not name or not media:
        return
    if by_name.get(name, media) != media:
        raise BirdnetError(f"{source}: file {name!r} has two MediaIds, {by_name[name]!r} and {media!r}")
    by_name[name] = media


def _xml_tag(root, tag: str) -> str | None:
    for child in root:
        if isinstance(child.tag, str) and child.tag.strip().lower() == tag and child.text and child.text.strip():
            return child.text.strip()
    return None


def read_media_ids(metadata: str | os.PathLike) -> dict[str, str]:
    """``{audio file name: MediaId}`` (plus unambiguous stems) from BirdCLEF metadata.

    Args:
        metadata: A folder of BirdCLEF XML files (or a folder whose ``xml/`` subfolder
            holds them; tags ``MediaId`` and ``FileName``), or a CSV file with a media
            id column (``media_id``/``MediaId``) and a file name column
            (``filename``/``FileName``/``file``/``path``).

    Raises:
        BirdnetError: The path does not exist, holds no usable entries, lacks a column,
            or gives one file two MediaIds.
    """
    path = Path(metadata)
    by_name: dict[str, str] = {}
    if path.is_dir():
        folder = path if any(path.glob("*.xml")) or not (path / "xml").is_dir() else path / "xml"
        files = sorted(p for p in folder.glob("*.xml") if p.is_file())
        if not files:
            raise BirdnetError(f"{path}: no *.xml files (expected one BirdCLEF XML file per recording)")
        bad = []
        for f in files:
            try:
                root = ElementTree.parse(f).getroot()
            except (ElementTree.ParseError, OSError, UnicodeDecodeError) as e:
                bad.append((f.name, f"does not parse ({e})"))
                continue
            media, filename = _xml_tag(root, "mediaid"), _xml_tag(root, "filename")
            if media is None or filename is None:
                bad.append((f.name, "no MediaId or FileName"))
                continue
            _add_media_id(by_name, str(f), filename, media)
        if bad:
            warnings.warn(f"{folder}: {len(bad)} of {len(files)} XML files skipped "
                          f"(first: {bad[0][0]}: {bad[0][1]})", stacklevel=2)
    elif path.is_file():
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise BirdnetError(f"{path}: cannot be read as a CSV table ({e})") from None
        lower = {str(c).strip().lower(): c for c in table.columns}
        media_col = next((lower[c] for c in _MEDIA_ID_COLUMNS if c in lower), None)
        file_col = next((lower[c] for c in _FILE_COLUMNS if c in lower), None)
        if media_col is None or file_col is None:
            raise BirdnetError(f"{path}: needs a media id column (media_id or MediaId) and a file name column "
                               f"(filename or FileName); columns found: {', '.join(map(str, table.columns))}")
        for filename, media in zip(table[file_col], table[media_col]):
            _add_media_id(by_name, str(path), filename, media)
    else:
        raise BirdnetError(f"{path}: metadata does not exist (give a BirdCLEF XML folder or a metadata CSV)")
    if not by_name:
        raise BirdnetError(f"{path}: no (file name, MediaId) pairs found")
    return _stem_keys(by_name)


def _resolve_media_ids(files: list[str], mapping: dict[str, str], source) -> dict[str, str]:
    out, missing = {}, []
    for f in files:
        p = Path(f)
        media = mapping.get(p.name) or mapping.get(p.stem)
        if media is None:
            missing.append(f)
        else:
            out[f] = media
    if missing:
        raise BirdnetError(f"{source}: no MediaId for {len(missing)} of {len(files)} audio file(s) "
                           f"(first: {missing[0]}); matched by file name, then stem")
    return out


def resolve_class_ids(labels: Sequence[str], class_ids: str | os.PathLike | None, models: Sequence[Path],
                      log) -> tuple[dict[str, str] | None, str]:
    """``({label: ClassId} or None, where from)``; checks every label has one.

    ``class_ids`` (CSV ``label,class_id``) wins, then the first model's
    ``assets.extra/labels.csv``; ``None`` means the labels themselves (with a warning).
    """
    from birdnet_tf.data.labels import load_class_ids
    from birdnet_tf.export import EXTRA

    source = Path(class_ids) if class_ids is not None else None
    if source is None:
        source = next((m / EXTRA / "labels.csv" for m in models if (m / EXTRA / "labels.csv").is_file()), None)
    if source is None:
        log("warning: no class ids (pass --class-ids CSV label,class_id, or train on data with class ids); "
            "writing labels as ClassId, but BirdCLEF expects its class ids")
        return None, "labels"
    ids = load_class_ids(source)
    missing = [label for label in labels if label not in ids]
    if missing:
        raise BirdnetError(f"{source}: no class id for {len(missing)} label(s), e.g. "
                           f"{', '.join(repr(m) for m in missing[:3])}")
    return ids, str(source)


# --------------------------------------------------------------------------
# Ensemble members
# --------------------------------------------------------------------------

@dataclass
class Member:
    """One model of an ensemble: its export, its whole-recording engine (or None: sliding) and
    ``order``, the indices that put its score columns into the ensemble's label order."""

    path: Path
    exported: object
    whole: object | None
    order: np.ndarray


def load_members(models: Sequence[str | os.PathLike], engine: str = "whole", log=print) -> tuple[list[Member], list[str]]:
    """Loads export folders as ensemble members; returns ``(members, labels)`` (the first model's order).

    Raises:
        BirdnetError: Not an export; a member's classes or sample rate differ from the first's.
    """
    from birdnet_tf.export import ExportedModel
    from birdnet_tf.infer.whole import WholeRecordingModel

    if engine not in ("whole", "sliding"):
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
        index = {label: j for j, label in enumerate(exported.labels)}
        whole = None
        if engine == "whole":
            try:
                whole = WholeRecordingModel.from_export(exported)
            except BirdnetError as e:
                log(f"warning: {e}; scoring it with sliding windows")
        members.append(Member(path, exported, whole, np.array([index[label] for label in labels], np.int64)))
    return members, labels


def _counted(blocks: Iterator[np.ndarray], total: list[int]) -> Iterator[np.ndarray]:
    for block in blocks:
        total[0] += len(block)
        yield block


def score_file(members: Sequence[Member], path: str, task: str, window_s: float, hop_s: float,
               max_windows: int | None = None, batch_size: int = 32, log=print) -> dict:
    """Scores one recording with every member and averages their window scores.

    Returns:
        ``n_samples`` (decoded length at the models' rate), ``start_s``, ``end_s``
        ``[windows]`` and ``scores [windows, classes]`` (the ensemble mean, in the first
        member's label order).

    Raises:
        AudioDecodeError, BirdnetError: The recording cannot be decoded or is empty.
    """
    from birdnet_tf.data.audio import iter_audio, load_audio
    from birdnet_tf.infer.predict import score_recording
    from birdnet_tf.infer.whole import _expected, _prefetched

    sr = members[0].exported.sample_rate_hz
    window = int(round(window_s * sr))
    hop = int(round(hop_s * sr))
    x, n_true, logits = None, None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in members:
            if m.whole is None:
                if x is None:
                    x, _ = load_audio(path, sr)
                n_true = len(x)
                logits.append(None)
                continue
            total = [0]
            try:
                spec, _ = m.whole.spectrogram(_counted(_prefetched(iter_audio(path, sr)), total), min_samples=window,
                                              expected_samples=_expected(path, sr))
            except BirdnetError as e:  # decoding errors name the file already
                raise type(e)(str(e) if str(path) in str(e) else f"{path}: {e}") from None
            logits.append(m.whole.step_logits([m.whole.centre(spec)])[0])
            n_true = total[0]
    seen = set()
    for w in caught:
        if str(w.message) not in seen:
            seen.add(str(w.message))
            log(f"warning: {w.message}")
    if task == "soundscape":
        start_s, end_s = soundscape_windows(n_true, sr, window_s, hop_s)
        starts = np.round(start_s * sr).astype(np.int64)
    else:
        starts = monophone_starts(n_true, window, hop, max_windows)
        start_s, end_s = starts / sr, np.minimum(starts + window, max(n_true, window)) / sr
    total_scores = None
    for m, lg in zip(members, logits):
        s = score_recording(m.exported, x, window, starts, batch_size) if lg is None \
            else m.whole.window_scores(lg, starts, window)
        s = np.asarray(s, np.float64)[:, m.order]
        total_scores = s if total_scores is None else total_scores + s
    return {"n_samples": n_true, "start_s": start_s, "end_s": end_s, "scores": total_scores / len(members)}


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------

def submit(task: str, models: str | os.PathLike | Sequence[str | os.PathLike], audio: str | os.PathLike | Sequence,
           out: str | os.PathLike, *, metadata: str | os.PathLike | None = None,
           class_ids: str | os.PathLike | None = None, pooling: str | None = None, window_s: float | None = None,
           hop_s: float | None = None, max_windows: int | None = None,
           drop_classes: Iterable[str] | None = DEFAULT_DROP_CLASSES, engine: str = "whole", force: bool = False,
           log=print, progress: bool = True) -> Path:
    """Writes a BirdCLEF 2018 run file (see the module docstring).

    Args:
        task: ``monophone`` or ``soundscape``.
        models: One export folder or several (an ensemble averaging window scores).
        audio: An audio folder (searched recursively) or audio files.
        out: The run file to write.
        metadata: BirdCLEF XML folder or metadata CSV giving each file's MediaId
            (default: the file's stem).
        class_ids: CSV ``label,class_id`` (default: the first model's
            ``assets.extra/labels.csv``, else the labels).
        pooling: Monophone per-file pooling of window scores (default ``median``);
            ``mean``, ``max``, ``logmeanexp[:a]`` also work. Ignored for soundscapes.
        window_s, hop_s: Window length and hop in seconds (monophone default: the first
            model's ``data.excerpt_s`` and ``data.eval_hop_s``; soundscape: 5 s and the
            window).
        max_windows: Monophone windows per file, spread evenly (default the first
            model's ``chunks.max_chunks_per_file``, 128).
        drop_classes: Class names left out of the file (case-insensitive); scores of
            the others are not renormalised.
        engine: ``whole`` or ``sliding`` (see the module docstring).
        force: Replace an existing ``out``.
        log: Where messages go.
        progress: Show a progress bar.

    Returns:
        ``out``.

    Raises:
        BirdnetError: A bad argument, model, metadata or class-id file; ``out`` exists
            without ``force``; no recording could be scored.
    """
    from tqdm.auto import tqdm

    from birdnet_tf.evaluate.pooling import pool
    from birdnet_tf.infer.outputs import write_birdclef_monophone, write_birdclef_soundscape
    from birdnet_tf.infer.predict import expand_inputs

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if task not in TASKS:
        raise BirdnetError(f"unknown task '{task}'; choose monophone or soundscape")
    out = Path(out)
    if out.is_dir():
        raise BirdnetError(f"{out}: is a folder; choose a file name for --out")
    if out.exists() and not force:
        raise BirdnetError(f"{out}: already exists; choose another --out or pass --force")
    if window_s is not None and window_s <= 0 or hop_s is not None and hop_s <= 0:
        raise BirdnetError("--window-s and --hop-s must be positive")
    if max_windows is not None and max_windows < 1:
        raise BirdnetError(f"--max-windows must be at least 1, got {max_windows}")
    pooling = pooling or DEFAULT_POOLING
    pool(np.zeros((1, 1)), pooling)  # validates the name before any work
    model_paths = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    inputs = [audio] if isinstance(audio, (str, os.PathLike)) else list(audio)
    files, problems = expand_inputs([str(i) for i in inputs])
    if not files:
        detail = "; ".join(f"{p}: {r}" for p, r in problems[:3])
        raise BirdnetError(f"no audio files to score ({detail or 'no inputs given'})")

    media_ids = _resolve_media_ids(files, read_media_ids(metadata), metadata) if metadata is not None else None
    members, labels = load_members(model_paths, engine, log)
    kept = kept_labels(labels, drop_classes)
    if not kept:
        raise BirdnetError(f"every class of the model is in the dropped classes {sorted(set(drop_classes or ()))}")
    if len(kept) < len(labels):
        log(f"dropping the class(es) {', '.join(x for x in labels if x not in kept)} from the run file "
            "(other scores are not renormalised)")
    ids, ids_from = resolve_class_ids(kept, class_ids, [m.path for m in members], log)

    cfg = members[0].exported.config
    if task == "soundscape":
        window_s = window_s or SOUNDSCAPE_WINDOW_S
        hop_s = hop_s or window_s
    else:
        window_s = window_s or cfg.data.excerpt_s
        hop_s = hop_s or (cfg.data.eval_hop_s if window_s == cfg.data.excerpt_s else window_s)
        max_windows = max_windows or cfg.chunks.max_chunks_per_file
        excerpts = {m.exported.config.data.excerpt_s for m in members}
        if len(excerpts) > 1:
            log(f"warning: the models were trained on excerpts of {sorted(excerpts)} s; "
                f"every model scores the same {window_s:g}-s windows")
    for path, reason in problems:
        log(f"skipped: {path}: {reason}")
    failures = list(problems)
    rows: list[list] = []
    for path in tqdm(files, desc=f"submit {task}", unit="file", disable=not progress or len(files) < 2):
        try:
            res = score_file(members, path, task, window_s, hop_s, max_windows, log=log)
        except (AudioDecodeError, BirdnetError) as e:
            reason = str(e)
            log(f"skipped: {reason}")
            failures.append((path, reason))
            continue
        if task == "monophone":
            rows.append([path, 0.0, round(res["n_samples"] / members[0].exported.sample_rate_hz, 3),
                         *pool(res["scores"], pooling)])
        else:
            rows += [[path, float(s), float(e), *row] for s, e, row in zip(res["start_s"], res["end_s"], res["scores"])]
    if not rows:
        detail = "; ".join(f"{p}: {r}" for p, r in failures[:3])
        raise BirdnetError(f"no recording could be scored ({len(failures)} skipped: {detail})")
    table, kept = drop_noise(pd.DataFrame(rows, columns=["file", "start_s", "end_s", *labels]), labels, drop_classes)
    writer = write_birdclef_monophone if task == "monophone" else write_birdclef_soundscape
    writer(table, kept, out, class_ids=ids, media_ids=media_ids, force=force)
    n_files = table["file"].nunique()
    n_lines = n_files * min(len(kept), 100) if task == "monophone" else len(table) * min(len(kept), 100)
    what = f"ensemble of {len(members)} models" if len(members) > 1 else str(members[0].path)
    log(f"wrote {out}: BirdCLEF {task} run, {n_files} file(s), {n_lines} lines ({what}; "
        f"{'pooling ' + pooling + ', ' if task == 'monophone' else ''}"
        f"{window_s:g}-s windows every {hop_s:g} s; ClassId from {ids_from}; "
        f"MediaId from {metadata if metadata is not None else 'file stems'})"
        + (f"; {len(failures)} input(s) skipped:" if failures else ""))
    for path, reason in failures:
        log(f"  {reason}" if str(path) in reason else f"  {path}: {reason}")
    return out
