"""Similarity search at archive scale: queries per second and memory at 10⁶ vectors.

Builds an embedding database of N synthetic vectors (clustered, as real embeddings are:
species and noise types form groups) through the real writer (Parquet parts), reads it back
as `birdnet-tf search` does, and times exact cosine search with birdnet-tf's NumPy index
(float32 and float16), one query at a time and in batches. If faiss is importable it is
timed beside (exact `IndexFlatIP` and approximate `IndexHNSWFlat`, with the HNSW recall
against the exact answer), to show whether a vector-index library earns its place.

    .venv/bin/python benchmarks/search_speed.py                 # 10⁶ × 256
    .venv/bin/python benchmarks/search_speed.py --n 1000000 --dim 1024

Prints one table. Memory: the process's peak RSS growth over the step, from
/proc/self/status (VmHWM is reset before each step where the kernel allows it).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from birdnet_tf.embed.db import EmbeddingFacts, EmbeddingWriter, read_database  # noqa: E402
from birdnet_tf.embed.search import VectorIndex, unit_rows  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    step = 65536
    for lo in range(0, n, step):
        k = min(step, n - lo)
        out[lo:lo + k] = centres[rng.integers(0, clusters, k)] + 0.7 * rng.normal(size=(k, dim)).astype(np.float32)
    return out


def qps(fn, queries: np.ndarray, batch: int, min_s: float = 2.0) -> float:
    done, t0 = 0, time.perf_counter()
    while True:
        for lo in range(0, len(queries), batch):
            fn(queries[lo:lo + batch])
            done += len(queries[lo:lo + batch])
            if time.perf_counter() - t0 >= min_s and done >= batch:
                return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the database")
    ap.add_argument("--dim", type=int, default=256, help="vector length")
    ap.add_argument("--k", type=int, default=10, help="neighbours per query")
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--db", help="keep the database here (default: a temporary folder)")
    args = ap.parse_args()

    rows: list[tuple[str, str, str, str]] = []
    vectors = clustered(args.n, args.dim, clusters=200, seed=0)
    queries = clustered(args.queries, args.dim, clusters=200, seed=0)[::-1].copy()  # same centres
    facts = EmbeddingFacts(model="synthetic", fingerprint="bench", dim=args.dim, window_s=3.0, hop_s=3.0,
                           sample_rate_hz=48000)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else Path(tmp) / "db"
        per_file = 1200  # one hour of 3-s windows per recording
        t0 = time.perf_counter()
        with EmbeddingWriter(db, facts, part_files=64) as w:
            for i, lo in enumerate(range(0, args.n, per_file)):
                v = vectors[lo:lo + per_file]
                s = np.arange(len(v)) * 3.0
                w.add(f"rec{i:06d}.wav", s, s + 3.0, v)
        write_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in db.glob("*")) / 2**20
        del vectors
        base = rss_mb()
        t0 = time.perf_counter()
        table = read_database(db)
        read_s = time.perf_counter() - t0
        rows.append(("write database (Parquet)", f"{write_s:.1f} s", f"{size_mb:.0f} MB on disk", ""))
        rows.append(("read database", f"{read_s:.1f} s", f"+{rss_mb() - base:.0f} MB RSS", ""))

        exact = None
        for dtype in (np.float32, np.float16):
            before = rss_mb()
            t0 = time.perf_counter()
            index = VectorIndex(table.vectors, dtype=dtype)
            build_s = time.perf_counter() - t0
            mem = rss_mb() - before
            if exact is None:
                exact = index.search(queries, args.k)[0]
                agree = "exact"
            else:
                got = index.search(queries, args.k)[0]
                agree = f"recall@{args.k} {np.mean([len(set(a) & set(b)) / args.k for a, b in zip(got, exact)]):.3f}"
            name = np.dtype(dtype).name
            for batch in (1, 64):
                rows.append((f"numpy {name} batch {batch}", f"{qps(lambda q: index.search(q, args.k), queries, batch):,.0f} q/s",
                             f"index +{mem:.0f} MB, built in {build_s:.1f} s", agree))
            del index

        try:
            import faiss  # optional; not a dependency
        except ImportError:
            rows.append(("faiss", "not installed", "", "(pip install faiss-cpu to compare)"))
        else:
            unit = unit_rows(table.vectors)
            qn = unit_rows(queries)
            flat = faiss.IndexFlatIP(args.dim)
            flat.add(unit)
            for batch in (1, 64):
                rows.append((f"faiss IndexFlatIP batch {batch}", f"{qps(lambda q: flat.search(q, args.k), qn, batch):,.0f} q/s",
                             "", "exact"))
            del flat
            t0 = time.perf_counter()
            hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.add(unit)
            build_s = time.perf_counter() - t0
            got = hnsw.search(qn, args.k)[1]
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(got, exact)])
            for batch in (1, 64):
                rows.append((f"faiss HNSW32 batch {batch}", f"{qps(lambda q: hnsw.search(q, args.k), qn, batch):,.0f} q/s",
                             f"built in {build_s:.0f} s", f"recall@{args.k} {recall:.3f}"))

    print(f"\nsimilarity search: {args.n:,} vectors × {args.dim}, top {args.k}, {os.cpu_count()} CPUs; "
          f"peak RSS {peak_mb():.0f} MB\n")
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))


if __name__ == "__main__":
    main()
