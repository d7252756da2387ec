"""Embedding databases: per-window vectors of many recordings, in Parquet parts.

A database is a folder that ``birdnet-tf embed`` writes::

    DB/embeddings.json        what made the vectors (the model and its settings): the marker
    DB/part-00000.parquet     rows: file, start_s, end_s, vector (fixed-size list of float32)
    DB/part-00001.parquet     ... one part per batch of finished recordings

Each part also lists, in its Parquet metadata, every recording it finished — including
recordings that gave no window (shorter than one window) — so a rerun skips exactly the
recordings that are done, and a part is written atomically (beside its name, then renamed),
so an interrupted run loses at most the batch in progress and never leaves half a part.

``embeddings.json`` holds the :class:`EmbeddingFacts` of the model; adding to a database
made by another model (another fingerprint, dimension, window or sample rate) is refused,
as is searching it with another model's query vectors.

Pure numpy + pyarrow; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import atomic_path, check_replaceable, write_json_atomic

DB_MARKER = "embeddings.json"
"""The file that makes a folder an embedding database (and holds its :class:`EmbeddingFacts`)."""

PART_GLOB = "part-*.parquet"
_PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
_FILES_KEY = b"birdnet_tf.files"
DB_VERSION = 1


@dataclass(frozen=True)
class EmbeddingFacts:
    """What made a database's vectors; two databases are compatible when these agree."""

    model: str              # where the model was loaded from (informative; not compared)
    fingerprint: str        # identifies the model's weights and labels (compared)
    dim: int                # vector length
    window_s: float
    hop_s: float
    sample_rate_hz: int
    layer: str = ""         # the layer the vectors come from (informative)
    version: int = DB_VERSION

    def to_json(self) -> dict:
        return {"written_by": "birdnet-tf embed", **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, obj: dict, where: str) -> "EmbeddingFacts":
        try:
            return cls(model=str(obj["model"]), fingerprint=str(obj["fingerprint"]), dim=int(obj["dim"]),
                       window_s=float(obj["window_s"]), hop_s=float(obj["hop_s"]),
                       sample_rate_hz=int(obj["sample_rate_hz"]), layer=str(obj.get("layer", "")),
                       version=int(obj.get("version", DB_VERSION)))
        except (KeyError, TypeError, ValueError) as err:
            raise BirdnetError(f"{where}: not an embedding database description ({err!r})") from None

    def mismatch(self, other: "EmbeddingFacts") -> str | None:
        """Why vectors made under ``other`` cannot join or query vectors made under ``self``."""
        if self.fingerprint != other.fingerprint:
            return (f"the vectors come from another model ({self.model!r}, fingerprint {self.fingerprint[:12]}) "
                    f"than {other.model!r} (fingerprint {other.fingerprint[:12]})")
        for field in ("dim", "window_s", "hop_s", "sample_rate_hz"):
            a, b = getattr(self, field), getattr(other, field)
            if (abs(a - b) > 1e-9) if isinstance(a, float) else a != b:
                return f"{field} differs: {a} in the database, {b} now"
        return None


@dataclass
class EmbeddingTable:
    """All rows of a database in memory: ``vectors`` is ``[n, dim]`` float32."""

    facts: EmbeddingFacts
    files: np.ndarray       # [n] object (str)
    starts: np.ndarray      # [n] float64
    ends: np.ndarray        # [n] float64
    vectors: np.ndarray     # [n, dim] float32

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # the TensorFlow-free base install has no pyarrow; its 'embed' extra adds it
        raise BirdnetError("embedding databases need pyarrow, which this install lacks: "
                           "pip install 'birdnet-tf[embed]' (TensorFlow-free) or 'birdnet-tf[train]'") from None
    return pa, pq


def is_database(path: str | os.PathLike) -> bool:
    return (Path(path) / DB_MARKER).is_file()


def read_facts(db: str | os.PathLike) -> EmbeddingFacts:
    path = Path(db)
    marker = path / DB_MARKER
    if not path.exists():
        raise BirdnetError(f"{path}: embedding database does not exist")
    if not marker.is_file():
        raise BirdnetError(f"{path}: not an embedding database (no {DB_MARKER}; make one with `birdnet-tf embed`)")
    try:
        obj = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BirdnetError(f"{marker}: unreadable ({err})") from None
    if not isinstance(obj, dict):
        raise BirdnetError(f"{marker}: not an embedding database description")
    return EmbeddingFacts.from_json(obj, str(marker))


def part_paths(db: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(db).glob(PART_GLOB) if _PART_RE.match(p.name))


def _part_files(path: Path) -> list[str]:
    _, pq = _pyarrow()
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as err:  # noqa: BLE001 - a damaged part names itself
        raise BirdnetError(f"{path}: unreadable Parquet part ({err}); delete it and rerun to redo its recordings") from None
    return json.loads(meta.get(_FILES_KEY, b"[]").decode("utf-8"))


class EmbeddingWriter:
    """Adds recordings' vectors to a database, one atomic Parquet part per ``part_files`` recordings.

    Opening an existing database checks that ``facts`` match its own (else a clear error);
    :meth:`done` lists the recordings already in it, so a rerun skips them. ``force`` starts
    the database afresh, but only where the folder is one ``embed`` wrote.
    """

    def __init__(self, db: str | os.PathLike, facts: EmbeddingFacts, *, force: bool = False, part_files: int = 64):
        self.path = Path(db)
        self.facts = facts
        self.part_files = max(1, int(part_files))
        if self.path.exists() and not self.path.is_dir():
            raise BirdnetError(f"{self.path}: exists and is not a folder")
        if force and self.path.exists() and any(self.path.iterdir()):
            check_replaceable(self.path, (DB_MARKER,), "embedding database", force=True)
            shutil.rmtree(self.path)
        if is_database(self.path):
            problem = read_facts(self.path).mismatch(facts)
            if problem:
                raise BirdnetError(f"{self.path}: cannot add to this embedding database: {problem} "
                                   "(write to a new --out, or --force to start it afresh)")
        elif self.path.exists() and any(self.path.iterdir()):
            raise BirdnetError(f"{self.path}: folder is not empty and is not an embedding database; "
                               "choose a new --out")
        self.path.mkdir(parents=True, exist_ok=True)
        if not is_database(self.path):
            write_json_atomic(self.path / DB_MARKER, facts.to_json())
        self._done: set[str] = set()
        self._next = 0
        for p in part_paths(self.path):
            self._done.update(_part_files(p))
            self._next = max(self._next, int(_PART_RE.match(p.name).group(1)) + 1)
        self._rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending: list[str] = []

    def done(self) -> set[str]:
        """Recordings already in the database (as the paths they were added under)."""
        return set(self._done)

    def add(self, file: str, starts, ends, vectors) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != self.facts.dim):
            raise BirdnetError(f"{file}: vectors of shape {vectors.shape}, expected [n, {self.facts.dim}]")
        starts = np.asarray(starts, dtype=np.float64).reshape(-1)
        ends = np.asarray(ends, dtype=np.float64).reshape(-1)
        if not (len(starts) == len(ends) == len(vectors)):
            raise BirdnetError(f"{file}: {len(starts)} starts, {len(ends)} ends and {len(vectors)} vectors")
        self._rows.append((str(file), starts, ends, vectors))
        self._pending.append(str(file))
        if len(self._pending) >= self.part_files:
            self.flush()

    def flush(self) -> Path | None:
        if not self._pending:
            return None
        pa, pq = _pyarrow()
        files = [f for f, s, _, _ in self._rows for _ in range(len(s))]
        starts = np.concatenate([s for _, s, _, _ in self._rows]) if self._rows else np.zeros(0)
        ends = np.concatenate([e for _, _, e, _ in self._rows]) if self._rows else np.zeros(0)
        vecs = (np.concatenate([v for *_, v in self._rows]) if self._rows
                else np.zeros((0, self.facts.dim), np.float32)).reshape(-1, self.facts.dim)
        flat = pa.array(np.ascontiguousarray(vecs).reshape(-1), type=pa.float32())
        table = pa.table({
            "file": pa.array(files, type=pa.string()),
            "start_s": pa.array(starts, type=pa.float64()),
            "end_s": pa.array(ends, type=pa.float64()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, self.facts.dim),
        })
        table = table.replace_schema_metadata({_FILES_KEY: json.dumps(self._pending).encode("utf-8")})
        out = self.path / f"part-{self._next:05d}.parquet"
        with atomic_path(out, ".parquet") as tmp:
            pq.write_table(table, tmp)
        self._next += 1
        self._done.update(self._pending)
        self._rows, self._pending = [], []
        return out

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "EmbeddingWriter":
        return self

    def __exit__(self, *exc) -> None:
        # finished recordings are kept even when the job stops with an error
        self.flush()


def read_database(db: str | os.PathLike, files: Iterable[str] | None = None) -> EmbeddingTable:
    """Every row of a database (optionally only some recordings) as one :class:`EmbeddingTable`."""
    pa, pq = _pyarrow()
    facts = read_facts(db)
    parts = part_paths(db)
    want = None if files is None else set(map(str, files))
    names, starts, ends, vecs = [], [], [], []
    for p in parts:
        try:
            t = pq.read_table(p, columns=["file", "start_s", "end_s", "vector"])
        except Exception as err:  # noqa: BLE001
            raise BirdnetError(f"{p}: unreadable Parquet part ({err})") from None
        vcol = t.column("vector").combine_chunks()
        if getattr(vcol.type, "list_size", facts.dim) != facts.dim:
            raise BirdnetError(f"{p}: vectors of length {vcol.type.list_size}, the database says {facts.dim}")
        v = vcol.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, facts.dim)
        f = np.asarray(t.column("file").to_pylist(), dtype=object)
        s = t.column("start_s").to_numpy()
        e = t.column("end_s").to_numpy()
        if want is not None:
            keep = np.fromiter((x in want for x in f), bool, len(f))
            f, s, e, v = f[keep], s[keep], e[keep], v[keep]
        names.append(f)
        starts.append(s)
        ends.append(e)
        vecs.append(v)
    if not vecs:
        return EmbeddingTable(facts, np.zeros(0, object), np.zeros(0), np.zeros(0), np.zeros((0, facts.dim), np.float32))
    return EmbeddingTable(facts, np.concatenate(names), np.concatenate(starts), np.concatenate(ends),
                          np.concatenate(vecs))
