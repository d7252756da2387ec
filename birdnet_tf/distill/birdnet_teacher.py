"""``birdnet-tf teacher birdnet``: a complete per-window BirdNET V2.4 score table for a dataset.

BirdNET needs numpy < 2 and tflite-runtime, so it runs in its own environment,
``.venv-birdnet`` (built by ``birdnet_env.sh``, shipped next to this module; ``--setup`` runs
it). birdnet-tf decodes every recording to 48 kHz itself (the ``birdnet`` package aborts on
MP3s whose header over-reports their length) and hands the signals to
:mod:`birdnet_tf.distill.birdnet_worker`, which scores every 3-s window for every BirdNET
species that maps onto the dataset's labels, with no confidence threshold (a *complete* table).

The table is birdnet-tf's wide window CSV, ``file,start_s,end_s,<BirdNET label>...`` (columns
named ``Genus species_Common name`` as BirdNET names them, so any student maps them by name),
``file`` being the recording's key in the dataset (its path relative to the dataset folder).
A sidecar ``TABLE.json`` records the settings, the teacher's version and the files skipped.
Rows are appended file chunk by file chunk, so an interrupted run resumes where it stopped.
BirdNET's weights (CC BY-NC-SA 4.0) are only read from the user's BirdNET environment, never
copied into the table or the repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from birdnet_tf.distill.names import SpeciesMatcher
from birdnet_tf.errors import AudioDecodeError, BirdnetError
from birdnet_tf.fileio import write_json_atomic

__all__ = [
    "BIRDNET_ENV_VAR",
    "BirdnetWorker",
    "birdnet_labels",
    "birdnet_windows",
    "env_script",
    "find_birdnet_env",
    "map_birdnet_species",
    "score_files",
    "setup_birdnet_env",
    "student_labels",
    "teacher_birdnet",
]

SAMPLE_RATE_HZ = 48000
BIRDNET_ENV_VAR = "BIRDNET_TF_BIRDNET_ENV"
"""Environment variable naming the BirdNET environment folder (instead of ``.venv-birdnet``)."""
ENV_NAME = ".venv-birdnet"
TABLE_FORMAT = "birdnet-tf teacher table 1"
_CHUNK_FILES = 8


def env_script() -> Path:
    """The ``birdnet_env.sh`` that builds a BirdNET environment (shipped with the package)."""
    return Path(__file__).resolve().with_name("birdnet_env.sh")


def _candidates(env: str | os.PathLike | None) -> list[Path]:
    if env:
        return [Path(env).expanduser()]
    found = [Path(os.environ[BIRDNET_ENV_VAR]).expanduser()] if os.environ.get(BIRDNET_ENV_VAR) else []
    found += [Path.cwd() / ENV_NAME, Path(__file__).resolve().parents[2] / ENV_NAME]
    return found


def find_birdnet_env(env: str | os.PathLike | None = None) -> Path:
    """The Python of the BirdNET environment.

    Looked for in ``env`` when given, else ``$BIRDNET_TF_BIRDNET_ENV``, ``./.venv-birdnet`` and
    ``.venv-birdnet`` beside the birdnet_tf package (a source checkout).

    Raises:
        BirdnetError: None of them holds a Python; the message says how to build one.
    """
    places = _candidates(env)
    for place in places:
        python = place / "bin" / "python"
        if python.is_file():
            return python
    where = ", ".join(str(p) for p in dict.fromkeys(places))
    raise BirdnetError(
        f"no BirdNET environment found (looked in {where}); build one with "
        f"'BIRDNET_ENV={places[0]} bash {env_script()}' (needs Python 3.11 and the network once), "
        f"or run 'birdnet-tf teacher birdnet ... --setup'")


def setup_birdnet_env(env: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> Path:
    """Builds (or checks) the BirdNET environment with ``birdnet_env.sh``; returns its Python."""
    target = _candidates(env)[0]
    if not (target / ".birdnet-env-ok").is_file():
        log(f"setting up the BirdNET environment {target} with {env_script()} (about a minute)...")
    proc = subprocess.run(["bash", str(env_script())], env={**os.environ, "BIRDNET_ENV": str(target)},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        raise BirdnetError("setting up the BirdNET environment failed: "
                           + (lines[-1] if lines else f"exit status {proc.returncode}"))
    return find_birdnet_env(target)


def _clean_env() -> dict[str, str]:
    # Nothing of birdnet-tf's virtualenv may leak into BirdNET's.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _worker_cmd(python: Path, *args: str) -> list[str]:
    return [str(python), str(Path(__file__).resolve().with_name("birdnet_worker.py")), *args]


def _last_json(text: str) -> dict | None:
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def birdnet_labels(python: Path) -> list[str]:
    """BirdNET V2.4's 6,522 labels (``Genus species_Common name``), read in its environment."""
    proc = subprocess.run(_worker_cmd(python, "--list-labels"), capture_output=True, text=True, env=_clean_env())
    msg = _last_json(proc.stdout)
    if proc.returncode != 0 or not msg or "labels" not in msg:
        err = (msg or {}).get("error") or (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BirdnetError(f"BirdNET ({python}) could not list its labels: {err}")
    return msg["labels"]


def map_birdnet_species(birdnet: Sequence[str], labels: Sequence[str],
                        common_names: dict[str, str] | None = None) -> dict[str, str]:
    """``{BirdNET label: student label}`` for every BirdNET species that maps onto ``labels``.

    Raises:
        BirdnetError: No BirdNET species maps onto any label.
    """
    matcher = SpeciesMatcher(labels, common_names)
    mapping = {}
    for name in birdnet:
        i = matcher.match(name)
        if i is not None and labels[i] not in mapping.values():
            mapping[name] = labels[i]
    if not mapping:
        raise BirdnetError(f"none of BirdNET's {len(birdnet)} species matches any of the {len(labels)} labels "
                           f"({', '.join(list(labels)[:5])}...) by scientific or common name")
    return mapping


class BirdnetWorker:
    """A running :mod:`~birdnet_tf.distill.birdnet_worker` in the BirdNET environment.

    Use as a context manager; :meth:`score` scores decoded 48-kHz signals (with ``embeddings``:
    returns BirdNET's 1,024-d window embeddings instead of species scores).
    """

    def __init__(self, python: Path, species: Sequence[str], overlap_s: float = 0.0, workers: int = 2,
                 embeddings: bool = False) -> None:
        self.species = list(species)
        self._key = "embeddings" if embeddings else "scores"
        self._tmp = tempfile.TemporaryDirectory(prefix="birdnet-tf-teacher-")
        spec = Path(self._tmp.name) / "species.json"
        spec.write_text(json.dumps(self.species), encoding="utf-8")
        self._stderr = open(Path(self._tmp.name) / "stderr.txt", "w+", encoding="utf-8")  # noqa: SIM115
        self._proc = subprocess.Popen(
            _worker_cmd(python, "--species", str(spec), "--overlap-s", repr(float(overlap_s)),
                        "--workers", str(int(workers)), *(["--embeddings"] if embeddings else [])),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=_clean_env())
        ready = self._reply()
        self.version = ready.get("version", "BirdNET V2.4")

    def _reply(self) -> dict:
        line = self._proc.stdout.readline()
        msg = json.loads(line) if line.startswith("{") else None
        if not msg or "error" in msg:
            self._stderr.seek(0)
            err = (msg or {}).get("error") or ([ln for ln in self._stderr.read().splitlines() if ln.strip()]
                                               or ["it ended without a message"])[-1]
            raise BirdnetError(f"BirdNET failed: {err}")
        return msg

    def score(self, signals: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float, float]:
        """Scores 48-kHz float32 signals: per signal ``[windows, species]`` (or ``[windows, 1024]``
        embeddings), plus hop and window length (s)."""
        folder = Path(tempfile.mkdtemp(dir=self._tmp.name))
        inputs = []
        for i, x in enumerate(signals):
            inputs.append(str(folder / f"{i}.npy"))
            np.save(inputs[-1], np.asarray(x, np.float32))
        out = str(folder / "out.npz")
        self._proc.stdin.write(json.dumps({"inputs": inputs, "out": out}) + "\n")
        self._proc.stdin.flush()
        self._reply()
        with np.load(out) as d:
            scores, n = d[self._key], d["n_windows"]
            hop_s, seg_s = float(d["hop_s"]), float(d["segment_s"])
        for p in [*inputs, out]:
            with contextlib.suppress(OSError):
                os.unlink(p)
        return [scores[i, : n[i]] for i in range(len(signals))], hop_s, seg_s

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._proc.stdin.write("\n")
            self._proc.stdin.flush()
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._stderr.close()
        self._tmp.cleanup()

    def __enter__(self) -> BirdnetWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(path: str) -> tuple[np.ndarray | None, str | None]:
    from birdnet_tf.data.audio import load_audio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # low sample rates are expected (xeno-canto MP3s at 22 kHz)
            audio, _ = load_audio(path, SAMPLE_RATE_HZ)
        return audio, None
    except AudioDecodeError as e:
        return None, str(e)


def _csv_number(x: float) -> str:
    return f"{x:.6g}"


def _rows(name: str, scores: np.ndarray, hop_s: float, seg_s: float, duration_s: float) -> str:
    out = []
    q = '"' if any(c in name for c in ',"\n') else ""
    shown = q + name.replace('"', '""') + q
    for w, row in enumerate(scores):
        start = w * hop_s
        end = min(start + seg_s, duration_s)
        out.append(",".join([shown, f"{start:.3f}", f"{end:.3f}", *map(_csv_number, row)]))
    return "".join(line + "\n" for line in out)


def _done_files(out: Path) -> set[str]:
    import pandas as pd

    # A crash mid-append can leave a partial last line: cut the file back to its last newline.
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(out, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    if out.stat().st_size == 0:
        return set()
    return set(pd.read_csv(out, usecols=["file"], dtype={"file": str})["file"])


def score_files(files: Sequence[tuple[str, str]], out: str | os.PathLike, species: Sequence[str], *,
                overlap_s: float = 0.0, workers: int = 2, env: str | os.PathLike | None = None,
                force: bool = False, settings: dict | None = None, progress: bool = True,
                log: Callable[[str], None] = print) -> dict:
    """Scores audio files with BirdNET into a complete wide window table (resumable).

    Args:
        files: ``(name in the table, audio path)`` per file.
        out: The table (CSV); its sidecar is ``out + ".json"``.
        species: BirdNET labels to score (the table's columns, in this order).
        overlap_s: Window overlap in seconds (0: consecutive 3-s windows).
        workers: BirdNET inference processes.
        env: The BirdNET environment folder (see :func:`find_birdnet_env`).
        force: Replace a table this package wrote with other settings (never another file).
        settings: Extra settings recorded in the sidecar (e.g. the dataset folder).

    Returns:
        The sidecar's content: settings, ``n_files``, ``n_windows``, ``skipped`` ``{name: why}``.

    Raises:
        BirdnetError: ``out`` exists and was not written by this command, or was written with
            other settings (without ``force``); BirdNET cannot run.
    """
    from tqdm import tqdm

    out = Path(out)
    sidecar = Path(str(out) + ".json")
    python = find_birdnet_env(env)
    meta = {"format": TABLE_FORMAT, "teacher": "BirdNET V2.4 FP32", "complete": True, "overlap_s": float(overlap_s),
            "species": list(species), **(settings or {})}
    done: set[str] = set()
    if out.exists() or sidecar.exists():
        old = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
        if old.get("format") != TABLE_FORMAT or not out.is_file():
            raise BirdnetError(f"{out}: exists and was not written by 'birdnet-tf teacher birdnet' "
                               f"(no matching {sidecar.name}); choose another --out")
        same = all(old.get(k) == v for k, v in meta.items())
        if not same and not force:
            diff = [k for k, v in meta.items() if old.get(k) != v]
            raise BirdnetError(f"{out}: written with other settings ({', '.join(diff)}); "
                               "use --force to replace it or choose another --out")
        if same:
            done = _done_files(out)
        else:
            out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in files]
    if len(set(names)) != len(names):
        raise BirdnetError("two files have the same name in the table")
    todo = [(n, p) for n, p in files if n not in done]
    if done:
        log(f"{out}: {len(files) - len(todo)} of {len(files)} files already scored, {len(todo)} to go")
    skipped: dict[str, str] = {}
    n_windows = 0
    if not out.exists():
        header = ",".join(["file", "start_s", "end_s", *[('"' + s.replace('"', '""') + '"') if "," in s or '"' in s
                                                           else s for s in species]])
        out.write_text(header + "\n", encoding="utf-8")
    write_json_atomic(sidecar, {**meta, "n_files": len(files), "skipped": {}})
    if todo:
        chunks = [todo[i: i + _CHUNK_FILES] for i in range(0, len(todo), _CHUNK_FILES)]
        bar = tqdm(total=len(todo), unit="file", desc="BirdNET", disable=not progress, file=sys.stderr)
        with BirdnetWorker(python, species, overlap_s, workers) as worker, ThreadPoolExecutor(1) as pool:
            meta["version"] = worker.version
            decode_next = pool.submit(lambda c: [(n, *_decode(p)) for n, p in c], chunks[0])
            for k in range(len(chunks)):
                decoded = decode_next.result()
                if k + 1 < len(chunks):  # decode the next chunk while BirdNET scores this one
                    decode_next = pool.submit(lambda c: [(n, *_decode(p)) for n, p in c], chunks[k + 1])
                good = [(n, a) for n, a, _ in decoded if a is not None]
                skipped.update({n: why for n, a, why in decoded if a is None})
                if good:
                    scores, hop_s, seg_s = worker.score([a for _, a in good])
                    text = "".join(_rows(n, s, hop_s, seg_s, len(a) / SAMPLE_RATE_HZ)
                                   for (n, a), s in zip(good, scores, strict=True))
                    n_windows += sum(len(s) for s in scores)
                    with open(out, "a", encoding="utf-8") as f:
                        f.write(text)
                        f.flush()
                        os.fsync(f.fileno())
                bar.update(len(decoded))
        bar.close()
    result = {**meta, "n_files": len(files), "skipped": skipped}
    write_json_atomic(sidecar, result)
    log(f"wrote {out}: {len(files) - len(skipped)} files scored ({len(todo) - len(skipped)} now, "
        f"{n_windows} windows), {len(species)} species")
    if skipped:
        log(f"{len(skipped)} file(s) skipped (not decodable), listed in {sidecar}: "
            + "; ".join(f"{n}: {why}" for n, why in list(skipped.items())[:3]))
    return result


def student_labels(spec: str | os.PathLike) -> list[str]:
    """Labels to map BirdNET onto: a labels file (one per line), a run folder or export (its
    ``labels.txt``), or a dataset folder (its primary and background species).

    Raises:
        BirdnetError: ``spec`` is none of these.
    """
    from birdnet_tf.data.labels import LabelSet

    p = Path(spec)
    if p.is_file():
        return list(LabelSet.load(p))
    for candidate in (p / "labels.txt", p / "assets.extra" / "labels.txt"):
        if candidate.is_file():
            return list(LabelSet.load(candidate))
    if p.is_dir():
        labels, _ = _dataset_labels(p)
        return labels
    raise BirdnetError(f"{p}: --labels must be a labels file, a run folder, an export or a dataset folder")


def _dataset_labels(data_dir: Path):
    from birdnet_tf.data.catalog import load_catalog, parse_secondary_labels

    catalog = load_catalog(data_dir)
    labels = sorted({str(v) for v in catalog["primary_label"]}
                    | {s for v in catalog["secondary_labels"] for s in parse_secondary_labels(v)})
    return labels, catalog


def _audio_files(folder: Path) -> list[tuple[str, str]]:
    from birdnet_tf.data.catalog import AUDIO_SUFFIXES

    if not folder.is_dir():
        raise BirdnetError(f"{folder}: not a folder of audio files")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not found:
        raise BirdnetError(f"{folder}: holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return [(p.relative_to(folder).as_posix(), str(p)) for p in found]


def teacher_birdnet(data_dir: str | os.PathLike, out: str | os.PathLike, *, labels: str | os.PathLike | None = None,
                    overlap_s: float = 0.0, workers: int = 2, env: str | os.PathLike | None = None,
                    setup: bool = False, all_species: bool = False, force: bool = False, progress: bool = True,
                    embeddings: bool = False, split: str | os.PathLike | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """``birdnet-tf teacher birdnet DATA --out TABLE``: BirdNET's complete table for a dataset.

    The columns are the BirdNET species that map onto the dataset's labels (primary and
    background species, by scientific name, else common name); ``all_species`` keeps all
    6,522. With ``labels`` (a labels file, run, export or dataset: :func:`student_labels`),
    ``data_dir`` may be any folder of audio files, e.g. unlabelled recordings for
    pseudo-labels; every audio file under it is scored. Rows name files by their path
    relative to ``data_dir``. Returns the sidecar (see :func:`score_files`).

    ``embeddings``: BirdNET's 1,024-d window embeddings instead of scores, an embedding table
    (:func:`embed_files`) for feature distillation. ``split``: a run's ``split.csv``; only its
    ``train`` files are scored or embedded (a validation recording never teaches).
    """
    if not 0 <= overlap_s < 3:
        raise BirdnetError(f"--overlap-s must be in [0, 3) seconds, got {overlap_s:g}")
    data = Path(data_dir)
    if embeddings:
        files = _audio_files(data) if labels is not None else [
            (str(r.key), str(r.path)) for r in _dataset_labels(data)[1].itertuples()]
        files = _training_files(files, split)
        python = setup_birdnet_env(env, log) if setup else find_birdnet_env(env)
        return embed_files(files, out, overlap_s=overlap_s, workers=workers, env=python.parent.parent, force=force,
                           settings={"data": str(data.resolve()), "split": str(Path(split).resolve()) if split else ""},
                           progress=progress, log=log)
    common: dict[str, str] = {}
    if labels is None:
        wanted, catalog = _dataset_labels(data)
        primaries = sorted({str(v) for v in catalog["primary_label"]})
        if "common_name" in catalog.columns:
            common = {str(r.primary_label): str(r.common_name) for r in catalog.itertuples()
                      if isinstance(r.common_name, str)}
        files = [(str(r.key), str(r.path)) for r in catalog.itertuples()]
    else:
        wanted = student_labels(labels)
        primaries = wanted
        files = _audio_files(data)
    python = setup_birdnet_env(env, log) if setup else find_birdnet_env(env)
    birdnet = birdnet_labels(python)
    mapping = map_birdnet_species(birdnet, wanted, common)
    species = list(birdnet) if all_species else list(mapping)
    missing = [lab for lab in primaries if lab not in mapping.values()]
    log(f"BirdNET knows {len(set(mapping.values()) & set(primaries))} of the {len(primaries)} classes"
        + (f" of {data_dir}" if labels is None else f" of {labels}")
        + (f" (not: {', '.join(missing)})" if missing else "")
        + (f"; {len(mapping)} of {len(wanted)} species with background species" if len(wanted) > len(primaries) else ""))
    files = _training_files(files, split)
    return score_files(files, out, species, overlap_s=overlap_s, workers=workers, env=python.parent.parent,
                       force=force, settings={"data": str(data.resolve()),
                                              "columns": "all" if all_species else "mapped"},
                       progress=progress, log=log)


def _training_files(files: list[tuple[str, str]], split) -> list[tuple[str, str]]:
    """``files`` restricted to the ``train`` rows of a run's ``split.csv`` (by dataset key); all without one.

    Raises:
        BirdnetError: The split file is missing, lacks ``key``/``split``, or names none of the files.
    """
    if not split:
        return files
    import pandas as pd

    p = Path(split)
    if p.is_dir():
        p = p / "split.csv"
    try:
        frame = pd.read_csv(p, dtype=str)
    except (OSError, ValueError) as e:
        raise BirdnetError(f"{p}: unreadable split file ({e})") from None
    if not {"key", "split"} <= set(frame.columns):
        raise BirdnetError(f"{p}: a split file needs the columns key and split (a run's split.csv)")
    train = set(frame.loc[frame["split"] == "train", "key"])
    kept = [(n, q) for n, q in files if n in train]
    if not kept:
        raise BirdnetError(f"{p}: names none of the {len(files)} files as train")
    return kept


def birdnet_windows(files: Sequence[str | os.PathLike], labels: Sequence[str], cache: str | os.PathLike, *,
                    overlap_s: float = 0.0, workers: int = 2, env: str | os.PathLike | None = None,
                    progress: bool = True, log: Callable[[str], None] = print):
    """BirdNET V2.4 zero-shot on audio files, as a window score table on a student's labels.

    Scores (or resumes) a complete table of the files at ``cache`` with :func:`score_files`
    (files named by their absolute path) and returns a DataFrame ``file, start_s, end_s,
    <label>...`` (``file`` as given), where a label BirdNET does not know scores 0.

    Raises:
        BirdnetError: as :func:`score_files`; no BirdNET species maps onto ``labels``.
    """
    import pandas as pd

    from birdnet_tf.distill.tables import read_teacher_table

    python = find_birdnet_env(env)
    mapping = map_birdnet_species(birdnet_labels(python), labels)
    named = [(str(Path(f).resolve()), str(f)) for f in files]
    score_files([(n, n) for n, _ in named], cache, list(mapping), overlap_s=overlap_s, workers=workers,
                env=python.parent.parent, settings={"columns": "mapped"}, progress=progress, log=log)
    table = read_teacher_table(cache, list(labels), log=lambda _m: None)
    back = dict(named)
    frame = pd.DataFrame({"file": [back.get(table.files[i], table.files[i]) for i in table.file_index],
                          "start_s": table.start_s, "end_s": table.end_s})
    scores = np.where(table.known, table.scores, 0.0).astype(np.float32)
    out = pd.concat([frame, pd.DataFrame(scores, columns=list(labels))], axis=1)
    return out[out["file"].isin(set(back.values()))].reset_index(drop=True)


def embed_files(files: Sequence[tuple[str, str]], out: str | os.PathLike, *, overlap_s: float = 0.0,
                workers: int = 2, env: str | os.PathLike | None = None, force: bool = False,
                settings: dict | None = None, progress: bool = True,
                log: Callable[[str], None] = print) -> dict:
    """BirdNET V2.4's 1,024-d embedding of every 3-s window of audio files: an embedding table
    (:mod:`birdnet_tf.distill.features`) at ``out`` (``.npz``), resumable.

    Chunks of files are written to ``out + ".parts/"`` as they are embedded (a rerun skips the
    files there) and merged into ``out`` at the end; the sidecar ``out + ".json"`` records the settings.

    Raises:
        BirdnetError: ``out`` exists and was not written by this command (or with other settings,
            without ``force``); BirdNET cannot run.
    """
    from tqdm import tqdm

    from birdnet_tf.distill.features import EMBEDDING_FORMAT, write_embedding_table

    out = Path(out)
    sidecar, parts = Path(str(out) + ".json"), Path(str(out) + ".parts")
    python = find_birdnet_env(env)
    meta = {"format": EMBEDDING_FORMAT, "teacher": "BirdNET V2.4 FP32", "overlap_s": float(overlap_s),
            **(settings or {})}
    names = [n for n, _ in files]
    if len(set(names)) != len(names):
        raise BirdnetError("two files have the same name in the table")
    if out.exists() or sidecar.exists():
        old = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
        if old.get("format") != EMBEDDING_FORMAT:
            raise BirdnetError(f"{out}: exists and was not written by 'birdnet-tf teacher birdnet --embeddings' "
                               f"(no matching {sidecar.name}); choose another --out")
        same = all(old.get(k) == v for k, v in meta.items()) and old.get("files") == names
        if same and out.is_file():
            log(f"{out}: already holds the embeddings of these {len(names)} files")
            return old
        if not same and not force:
            raise BirdnetError(f"{out}: written with other settings or files; use --force to replace it "
                               "or choose another --out")
        for p in [out, *(sorted(parts.glob("*.npz")) if parts.is_dir() else [])]:
            with contextlib.suppress(OSError):
                p.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sidecar, {**meta, "files": names, "complete": False})
    done: dict[str, Path] = {}
    for part in sorted(parts.glob("*.npz")):
        try:
            with np.load(part) as d:
                done.update({str(n): part for n in d["files"]})
        except (OSError, ValueError, KeyError):
            part.unlink()  # a part cut short by a crash: embedded again
    todo = [(n, p) for n, p in files if n not in done]
    if done:
        log(f"{out}: {len(files) - len(todo)} of {len(files)} files already embedded, {len(todo)} to go")
    skipped: dict[str, str] = {}
    if todo:
        chunks = [todo[i: i + _CHUNK_FILES] for i in range(0, len(todo), _CHUNK_FILES)]
        bar = tqdm(total=len(todo), unit="file", desc="BirdNET embeddings", disable=not progress, file=sys.stderr)
        with BirdnetWorker(python, [], overlap_s, workers, embeddings=True) as worker, ThreadPoolExecutor(1) as pool:
            meta["version"] = worker.version
            decode_next = pool.submit(lambda c: [(n, *_decode(p)) for n, p in c], chunks[0])
            for k in range(len(chunks)):
                decoded = decode_next.result()
                if k + 1 < len(chunks):
                    decode_next = pool.submit(lambda c: [(n, *_decode(p)) for n, p in c], chunks[k + 1])
                good = [(n, a) for n, a, _ in decoded if a is not None]
                skipped.update({n: why for n, a, why in decoded if a is None})
                if good:
                    vectors, hop_s, seg_s = worker.score([a for _, a in good])
                    rows = [(n, w * hop_s, min(w * hop_s + seg_s, len(a) / SAMPLE_RATE_HZ))
                            for (n, a), v in zip(good, vectors, strict=True) for w in range(len(v))]
                    part = parts / f"part-{len(list(parts.glob('*.npz'))):05d}.npz"
                    with tempfile.NamedTemporaryFile(dir=parts, suffix=".tmp.npz", delete=False) as tmp:
                        np.savez(tmp, files=np.array([n for n, _ in good]),
                                 row_file=np.array([r[0] for r in rows]), start_s=np.array([r[1] for r in rows]),
                                 end_s=np.array([r[2] for r in rows]),
                                 vectors=np.concatenate(vectors).astype(np.float16))
                    os.replace(tmp.name, part)
                bar.update(len(decoded))
        bar.close()
    merged = {"row_file": [], "start_s": [], "end_s": [], "vectors": []}
    for part in sorted(parts.glob("*.npz")):
        with np.load(part) as d:
            for k in merged:
                merged[k].append(d[k])
    if not merged["vectors"]:
        raise BirdnetError(f"{out}: no file could be embedded ({len(skipped)} skipped)")
    write_embedding_table(out, *(np.concatenate(merged[k]) for k in merged))
    result = {**meta, "files": names, "complete": True, "skipped": skipped,
              "n_windows": int(sum(len(v) for v in merged["vectors"]))}
    write_json_atomic(sidecar, result)
    for part in parts.glob("*.npz"):
        part.unlink()
    with contextlib.suppress(OSError):
        parts.rmdir()
    log(f"wrote {out}: {len(files) - len(skipped)} files, {result['n_windows']} windows of BirdNET's "
        f"1024-d embeddings")
    if skipped:
        log(f"{len(skipped)} file(s) skipped (not decodable), listed in {sidecar}")
    return result
