"""``birdnet-tf batch``: archive-scale inference as an Apache Beam pipeline.

The whole-recording engine (:mod:`birdnet_tf.infer.whole`) scores each file inside a Beam
``DoFn`` that loads the export once per worker (``DoFn.setup``), so one command scores a
folder on a laptop (Beam's DirectRunner in several local processes, the default) or an
archive on a Flink, Spark or Dataflow cluster (Beam's own pipeline options, passed with
``--beam-option K=V``). Every worker must be able to read the export and the audio by the
paths given and write to the output folder: a shared filesystem.

The output folder::

    OUT/batch.json                         what is scored how (model, window, hop); a rerun must match
    OUT/files/<name>-<hash>.npz            one per finished file: its windows' scores (the completion record)
    OUT/failed/<name>-<hash>.json          one per file that could not be scored, with the reason
    OUT/scores-SSSSS-of-NNNNN.csv          the per-window table, sharded (columns as predict --window-s)
    OUT/scores-SSSSS-of-NNNNN.parquet      the same rows in Parquet (float32 scores, unrounded)
    OUT/manifest.json                      files done, counts, failures with reasons, runner, times

A file is done when its ``files/`` record exists (written atomically after it is scored),
so a rerun of the same command after an interruption scores only what is not done (and
retries files that failed); the shards are then rewritten from all records.

Results are those of ``birdnet-tf predict MODEL FILES --window-s W --hop-s H``: the same
engine, window grid and pooling (the tests compare them window by window).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from birdnet_tf.errors import BirdnetError, about

#: Marker and settings of a batch output folder (``--force`` replaces only folders that have it).
SETTINGS_FILE = "batch.json"
MANIFEST_FILE = "manifest.json"
RECORDS_DIR = "files"
FAILED_DIR = "failed"
SHARD_PREFIX = "scores-"

#: Options birdnet-tf sets unless ``--beam-option`` says otherwise: local processes, quiet workers.
DEFAULT_OPTIONS = {"runner": "DirectRunner", "direct_running_mode": "multi_processing",
                   "default_sdk_harness_log_level": "WARNING"}


@dataclass(frozen=True)
class BatchSettings:
    """What a batch folder holds; a rerun into the same folder must use the same settings."""

    model: str  # absolute path of the export
    model_digest: str  # sha1 of its saved_model.pb and variables index
    window_s: float
    hop_s: float


# ---------------------------------------------------------------- the scoring engine (one adapter)
def load_scorer(model_dir: str):
    """The engine a worker loads once (``DoFn.setup``): ``(scorer, export)``; keep both (the scorer's
    functions live in the export's loaded SavedModel)."""
    from birdnet_tf.export import ExportedModel
    from birdnet_tf.fileio import quiet_tensorflow
    from birdnet_tf.infer.whole import WholeRecordingModel

    quiet_tensorflow()
    exported = ExportedModel(model_dir)
    return WholeRecordingModel.from_export(exported), exported


def score_file(scorer, path: str, window_s: float, hop_s: float) -> dict:
    """Scores one recording: ``start_s``, ``end_s``, ``scores [windows, classes]``, ``n_samples``.

    The one place this module calls the engine (:meth:`birdnet_tf.infer.engine.Scorer.score`).
    Raises :class:`BirdnetError` (decoding problems included, naming the file) for a file that
    cannot be scored.
    """
    ws = scorer.score(path, window_s, hop_s, log=logging.warning)
    return {"start_s": np.asarray(ws.starts, np.float64), "end_s": np.asarray(ws.ends, np.float64),
            "scores": np.asarray(ws.scores, np.float32), "n_samples": int(ws.n_samples),
            "sample_rate_hz": int(ws.sample_rate)}


# ---------------------------------------------------------------- paths and records
def record_name(path: str) -> str:
    """``<stem>-<hash>``: a record name unique per (absolute) input path and readable."""
    digest = hashlib.sha1(os.path.abspath(path).encode("utf-8")).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem)[:40]
    return f"{stem}-{digest}"


def _atomic_write(path: Path, write) -> None:
    from birdnet_tf.fileio import atomic_path

    with atomic_path(path, suffix=path.suffix) as tmp:
        write(tmp)


def _write_json(path: Path, data) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"))


def read_record(path: str | os.PathLike) -> dict:
    """A ``files/*.npz`` completion record: ``file``, ``start_s``, ``end_s``, ``scores``, ``n_samples``."""
    with np.load(path, allow_pickle=False) as z:
        return {"file": str(z["path"]), "start_s": z["start_s"], "end_s": z["end_s"], "scores": z["scores"],
                "n_samples": int(z["n_samples"]), "sample_rate_hz": int(z["sample_rate_hz"])}


def shard_name(index: int, count: int, suffix: str) -> str:
    return f"{SHARD_PREFIX}{index:05d}-of-{count:05d}{suffix}"


# ---------------------------------------------------------------- Beam transforms
def _beam():
    try:
        import apache_beam
    except ImportError:
        raise BirdnetError("birdnet-tf batch needs Apache Beam: pip install 'birdnet-tf[beam]' "
                           "(apache-beam==2.77.0)") from None
    return apache_beam


def _score_dofn():
    beam = _beam()
    from apache_beam.metrics import Metrics

    class ScoreFile(beam.DoFn):
        """Scores a file and writes its completion record (or its failure record); yields its record name."""

        def __init__(self, model_dir: str, out: str, window_s: float, hop_s: float):
            self.model_dir, self.out, self.window_s, self.hop_s = model_dir, out, window_s, hop_s
            self.scored = Metrics.counter("birdnet_tf", "files_scored")
            self.failed = Metrics.counter("birdnet_tf", "files_failed")
            self.audio_ms = Metrics.counter("birdnet_tf", "audio_ms_scored")

        def setup(self):
            self.scorer, self.export = load_scorer(self.model_dir)
            if self.scorer.uses_metadata:
                logging.warning("%s: this model uses recording metadata; batch scores every file with date, "
                                "time and place unknown", self.model_dir)

        def process(self, path: str):
            name = record_name(path)
            out = Path(self.out)
            failed = out / FAILED_DIR / f"{name}.json"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # decoding notes; the file is scored all the same
                    res = score_file(self.scorer, path, self.window_s, self.hop_s)
            except Exception as e:  # noqa: BLE001 - one bad file is listed in the manifest, the archive goes on
                reason = str(e) if isinstance(e, BirdnetError) else f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                _write_json(failed, {"file": path, "reason": reason})
                self.failed.inc()
                return
            _atomic_write(out / RECORDS_DIR / f"{name}.npz",
                          lambda tmp: np.savez(tmp, path=np.array(path), **res))
            failed.unlink(missing_ok=True)  # it failed in an earlier run; not any more
            self.scored.inc()
            self.audio_ms.inc(int(round(1000 * res["n_samples"] / res["sample_rate_hz"])))
            yield name

    return ScoreFile


def _write_shard_dofn():
    beam = _beam()
    from apache_beam.metrics import Metrics

    class WriteShard(beam.DoFn):
        """``(shard, [(position, record name)])`` → the shard's CSV (and Parquet) table, rows in input order."""

        def __init__(self, out: str, count: int, labels: list[str], parquet: bool):
            self.out, self.count, self.labels, self.parquet = out, count, labels, parquet
            self.rows = Metrics.counter("birdnet_tf", "rows")

        def process(self, element):
            import pandas as pd

            shard, members = element
            out = Path(self.out)
            parts = []
            for _, name in sorted(members):
                r = read_record(out / RECORDS_DIR / f"{name}.npz")
                part = pd.DataFrame(r["scores"], columns=self.labels)
                part.insert(0, "end_s", np.round(r["end_s"], 3))
                part.insert(0, "start_s", np.round(r["start_s"], 3))
                part.insert(0, "file", r["file"])
                parts.append(part)
            table = pd.concat(parts, ignore_index=True)
            _atomic_write(out / shard_name(shard, self.count, ".csv"),
                          lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
            if self.parquet:
                _atomic_write(out / shard_name(shard, self.count, ".parquet"),
                              lambda tmp: table.to_parquet(tmp, index=False))
            self.rows.inc(len(table))
            yield shard

    return WriteShard


# ---------------------------------------------------------------- options and inputs
def pipeline_options(options: list[str] | None = None, workers: int = 2):
    """Beam ``PipelineOptions`` from ``K=V`` strings (``--beam-option``) over birdnet-tf's defaults.

    Defaults: DirectRunner, ``direct_running_mode=multi_processing``,
    ``direct_num_workers=workers``. Raises :class:`BirdnetError` for an entry that is not
    ``K=V``, an option Beam does not know, or a value Beam rejects.
    """
    import io

    _beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    values = {**DEFAULT_OPTIONS, "direct_num_workers": str(int(workers))}
    for item in options or []:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not eq or not key:
            raise BirdnetError(f"--beam-option '{item}': expected KEY=VALUE, e.g. direct_num_workers=4")
        values[key] = value
    flags = [f"--{k}={v}" for k, v in values.items()]
    opts = PipelineOptions(flags)
    err = io.StringIO()
    logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "Discarding unparseable args": said below, as an error
    try:
        with contextlib.redirect_stderr(err):
            known = opts.get_all_options()
            every = opts.get_all_options(retain_unknown_options=True)
    except SystemExit:  # argparse: a bad value (its last line says which)
        lines = [s for s in err.getvalue().splitlines() if s.strip()]
        detail = lines[-1].split("error: ", 1)[-1] if lines else "rejected"
        raise BirdnetError(f"--beam-option: Beam rejects it: {detail}") from None
    finally:
        logger.setLevel(level)
    unknown = sorted(set(every) - set(known))
    if unknown:
        raise BirdnetError(f"--beam-option: Beam knows no option {', '.join(unknown)} "
                           "(see Beam's PipelineOptions for the runner you use)")
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(known["runner"])
    except (ValueError, ImportError) as e:
        raise BirdnetError(f"--beam-option runner: {' '.join(str(e).split())[:400]}") from None
    return opts


def expand_paths(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Audio files from files, folders (recursive) and globs (``*``, ``?``, ``[…]``, ``**``).

    Returns (files, problems) like :func:`birdnet_tf.infer.predict.expand_inputs`; each file once.
    """
    from birdnet_tf.infer.predict import expand_inputs

    items, problems = [], []
    for item in inputs:
        if not os.path.exists(item) and glob.has_magic(item):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                problems.append((item, "pattern matches no files"))
            items += found
        else:
            items.append(item)
    files, more = expand_inputs(items)
    seen = set()
    unique = [f for f in files if not (os.path.abspath(f) in seen or seen.add(os.path.abspath(f)))]
    return unique, problems + more


def _model_settings(model_dir: str | os.PathLike, window_s: float | None, hop_s: float | None):
    """Checks the export without loading TensorFlow: (settings, labels, facts)."""
    from birdnet_tf.config import read_config_json

    path = Path(model_dir)
    if not (path / "saved_model.pb").is_file():
        raise BirdnetError(f"{path}: not an exported model (no saved_model.pb); "
                           "create one with 'birdnet-tf export RUN_DIR --out DIR'")
    cfg_file = path / "assets.extra" / "config.json"
    if not cfg_file.is_file():
        raise BirdnetError(f"{path}: export lacks assets.extra/config.json (not made by birdnet-tf export?)")
    cfg, extra = read_config_json(cfg_file)
    if not extra.get("whole_recording"):
        raise BirdnetError(f"{path}: export has no whole-recording signatures (a PCEN or 2018-baseline chunk "
                           "model, or made by an older birdnet-tf); score it with birdnet-tf predict --engine sliding")
    labels = [s for s in (path / "assets.extra" / "labels.txt").read_text(encoding="utf-8").splitlines() if s]
    if window_s is not None and window_s <= 0 or hop_s is not None and hop_s <= 0:
        raise BirdnetError("--window-s and --hop-s must be positive")
    window_s = float(window_s or cfg.data.excerpt_s)
    digest = hashlib.sha1()
    for name in ("saved_model.pb", "variables/variables.index"):
        if (path / name).is_file():
            digest.update((path / name).read_bytes())
    settings = BatchSettings(str(path.resolve()), digest.hexdigest(), window_s, float(hop_s or window_s))
    return settings, labels, extra["whole_recording"]


def _prepare_out(out: Path, settings: BatchSettings, force: bool) -> None:
    """Creates ``out`` or checks that it is this batch's folder (``force``: clears what a batch wrote)."""
    from birdnet_tf.fileio import check_replaceable

    if (out / SETTINGS_FILE).is_file() and not force:
        try:
            before = BatchSettings(**json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:
            raise BirdnetError(f"{out / SETTINGS_FILE}: unreadable ({e}); choose another --out") from None
        if before != settings:
            diff = ", ".join(f"{k} {getattr(before, k)} → {getattr(settings, k)}" for k in asdict(settings)
                             if getattr(before, k) != getattr(settings, k))
            raise BirdnetError(f"{out}: holds a batch run with other settings ({diff}); choose another --out "
                               "or pass --force to start it again")
        return
    check_replaceable(out, (SETTINGS_FILE,), "batch output folder", force)
    if out.is_dir():  # --force: only what a batch writes
        for sub in (RECORDS_DIR, FAILED_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in [*out.glob(f"{SHARD_PREFIX}*-of-*"), out / MANIFEST_FILE, out / SETTINGS_FILE]:
            f.unlink(missing_ok=True)
    (out / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    (out / FAILED_DIR).mkdir(exist_ok=True)
    _write_json(out / SETTINGS_FILE, asdict(settings))


@contextlib.contextmanager
def _quiet_beam_logs():
    """Keeps Beam's start-up warnings of each local worker (echoed by its job service) off the console."""
    loggers = [logging.getLogger(n) for n in ("apache_beam.runners.portability.local_job_service",
                                              "apache_beam.options.pipeline_options")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _counter(result, name: str) -> int | None:
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    except Exception:  # noqa: BLE001 - a runner without metrics
        return None
    return int(sum((c.committed if c.committed is not None else c.attempted) or 0 for c in found))


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _watch(out: Path, before: int, total: int, since: float, progress: bool, stop: threading.Event) -> None:
    """A progress bar over the records appearing in ``out`` (the workers may be other processes or machines)."""
    from tqdm.auto import tqdm

    def finished() -> int:  # hidden names are records being written
        try:
            failed = sum(1 for p in (out / FAILED_DIR).glob("[!.]*") if p.stat().st_mtime >= since)
            return sum(1 for _ in (out / RECORDS_DIR).glob("[!.]*")) + failed
        except OSError:  # a failure record removed while counting: count again next time
            return 0

    with tqdm(total=total, initial=before, desc="batch", unit="file", disable=not progress) as bar:
        while not stop.wait(1.0):
            bar.update(max(0, min(total, finished()) - bar.n))
        bar.update(max(0, min(total, finished()) - bar.n))


# ---------------------------------------------------------------- the command
def run_batch(model_dir: str | os.PathLike, inputs: list[str], out: str | os.PathLike,
              window_s: float | None = None, hop_s: float | None = None, workers: int = 2,
              beam_options: list[str] | None = None, files_per_shard: int = 200, parquet: bool | None = None,
              force: bool = False, progress: bool = True, log=None) -> dict:
    """Scores audio files, folders and globs with an export as a Beam pipeline (see the module docstring).

    Args:
        model_dir: Export folder (with whole-recording signatures).
        inputs: Audio files, folders (searched recursively) and glob patterns.
        out: Output folder; a rerun into it resumes (same model and windows), ``force`` starts over.
        window_s, hop_s: Windows of ``window_s`` (default: the model's excerpt) every ``hop_s``
            (default: ``window_s``), as ``predict --window-s --hop-s``.
        workers: ``direct_num_workers`` of the DirectRunner.
        beam_options: ``K=V`` Beam pipeline options over the defaults, e.g. ``runner=FlinkRunner``.
        files_per_shard: Files per output table shard.
        parquet: Also write Parquet shards (default: when pyarrow is installed).

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        BirdnetError: A bad option, model or output folder, or no input file at all.
    """
    log = log or print
    opts = pipeline_options(beam_options, workers)  # a bad option fails before anything is read
    if files_per_shard < 1:
        raise BirdnetError("--files-per-shard must be at least 1")
    settings, labels, facts = _model_settings(model_dir, window_s, hop_s)
    if facts.get("metadata"):
        log("warning: this model uses recording metadata; batch scores every file with date, time and place unknown")
    files, problems = expand_paths(inputs)
    for path, reason in problems:
        log(f"skipped: {about(path, reason)}")
    if not files:
        raise BirdnetError(f"no audio file to score ({len(problems)} input(s) skipped: "
                           + "; ".join(about(path, reason) for path, reason in problems[:3]) + ")")
    if parquet is None:
        import importlib.util

        parquet = importlib.util.find_spec("pyarrow") is not None
    out = Path(out)
    _prepare_out(out, settings, force)

    beam = _beam()
    names = [record_name(f) for f in files]
    records = out / RECORDS_DIR
    done = {p.stem for p in records.glob("[!.]*.npz")}
    todo = [f for f, n in zip(files, names) if n not in done]
    done_before = len(files) - len(todo)
    log(f"batch: {len(files)} file(s), {done_before} already done, {len(todo)} to score "
        f"(runner {opts.get_all_options()['runner']})")
    n_shards = max(1, -(-len(files) // files_per_shard))
    position = {n: (i * n_shards // len(files), i) for i, n in enumerate(names)}  # contiguous, input order

    started = time.time()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(out, done_before, len(files), started - 1.0,
                                                    progress and len(files) > 1, stop), daemon=True)
    watcher.start()
    try:
        pipeline = beam.Pipeline(options=opts)
    except ValueError as e:  # an unknown runner
        stop.set()
        raise BirdnetError(f"--beam-option: {e}") from None
    try:
        scored = (pipeline | "Files to score" >> beam.Create(todo) | "Spread" >> beam.Reshuffle()
                  | "Score" >> beam.ParDo(_score_dofn()(str(Path(model_dir).resolve()), str(out.resolve()),
                                                       settings.window_s, settings.hop_s)))
        earlier = pipeline | "Done earlier" >> beam.Create(sorted(done & set(names)))
        _ = ((scored, earlier) | beam.Flatten()
             | "Shard" >> beam.Map(lambda n, pos=position: (pos[n][0], (pos[n][1], n)))
             | beam.GroupByKey()
             | "Write shards" >> beam.ParDo(_write_shard_dofn()(str(out.resolve()), n_shards, labels, parquet)))
        with _quiet_beam_logs():
            result = pipeline.run()
            result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - the runner's own failure, in one line
        lines = [s for s in str(e).splitlines() if s.strip()]
        raise BirdnetError(f"the Beam pipeline failed ({lines[-1][:300] if lines else type(e).__name__}); files "
                           f"finished so far are kept in {out / RECORDS_DIR}: run the same command again to "
                           "resume") from e
    finally:
        stop.set()
        watcher.join()
    seconds = time.time() - started
    return _write_manifest(out, files, names, problems, settings, opts, result, n_shards, done_before, seconds, log)


def _write_manifest(out, files, names, problems, settings, opts, result, n_shards, done_before, seconds, log):
    import apache_beam

    have = {p.stem for p in (out / RECORDS_DIR).glob("[!.]*.npz")}
    failures = [{"file": path, "reason": reason} for path, reason in problems]
    for f, n in zip(files, names):
        rec = out / FAILED_DIR / f"{n}.json"
        if n not in have and rec.is_file():
            failures.append(json.loads(rec.read_text(encoding="utf-8")))
        elif n not in have:
            failures.append({"file": f, "reason": "not scored (the pipeline did not finish it)"})
    shards = sorted(p.name for p in out.glob(f"{SHARD_PREFIX}*-of-{n_shards:05d}.*"))
    for stale in out.glob(f"{SHARD_PREFIX}*-of-*"):  # an earlier run's shards of another count
        if not stale.name.endswith(tuple(f"-of-{n_shards:05d}{s}" for s in (".csv", ".parquet"))):
            stale.unlink(missing_ok=True)
    scored_now = _counter(result, "files_scored")
    options = {k: v for k, v in opts.get_all_options(drop_default=True).items() if v is not None}
    manifest = {
        "settings": asdict(settings),
        "files": len(files), "done": len(have & set(names)), "done_before": done_before,
        "scored_this_run": scored_now, "failed": len(failures),
        "rows": _counter(result, "rows"), "audio_s_scored_this_run": _seconds(_counter(result, "audio_ms_scored")),
        "seconds": round(seconds, 3), "shards": shards, "failures": failures,
        "runner": options.get("runner"), "beam_options": options, "apache_beam": apache_beam.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(out / MANIFEST_FILE, manifest)
    log(f"wrote {out}: {manifest['done']} of {len(files)} file(s) done ({scored_now} scored now, {done_before} "
        f"before), {manifest['rows']} window rows in {len(shards)} shard file(s), {seconds:.1f} s"
        + (f"; {len(failures)} input(s) not scored:" if failures else ""))
    for fail in failures:
        log(f"  {about(fail['file'], fail['reason'])}")
    return manifest
