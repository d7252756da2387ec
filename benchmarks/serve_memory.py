"""Memory of ``birdnet-tf serve`` under a burst of large REST requests (issue 12, item 9).

Usage::

    python benchmarks/serve_memory.py EXPORT_DIR [--code DIR] [--requests 6] [--mb 57] [--max-body-mb MB]

Starts the real server (``birdnet-tf serve EXPORT_DIR``, loopback only, a free port) with the
``birdnet_tf`` of checkout ``--code`` (default: this one; e.g. a worktree of an older commit
for a before/after comparison), sends ``--requests`` concurrent ``:predict`` requests of about
``--mb`` MB each (one recording as a JSON list of floats, for the export's default signature),
and prints the server's resident memory: at rest before the burst, its peak during it
(``VmHWM``) and settled (3 s after the last response). Every wait is bounded.

Any export works (``birdnet-tf export RUN --out DIR``); the figures depend little on the
model, as parsing the JSON bodies dominates.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_SERVE = "import sys\nfrom birdnet_tf.cli import main\nsys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 300) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def make_body(metadata: dict, mb: float) -> bytes:
    """A ``:predict`` body of about ``mb`` MB: one recording for the default signature's waveform input."""
    sigs = metadata["metadata"]["signature_def"]["signature_def"]
    inputs = sigs["serving_default"]["inputs"]
    name = next(iter(inputs))
    rng = np.random.default_rng(0)
    n = int(mb * 2**20 / 22)  # json.dumps of a float32 sample (0.05 × N(0, 1)): ~22 bytes with ", "
    x = (0.05 * rng.standard_normal(n)).astype(np.float32).astype(float)
    return json.dumps({"signature_name": "serving_default", "inputs": {name: [x.tolist()]}}).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", help="an export folder (saved_model.pb)")
    ap.add_argument("--code", default=str(ROOT), help="checkout whose birdnet_tf serves (default: this one)")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--mb", type=float, default=57.0, help="size of each request body in MB")
    ap.add_argument("--max-body-mb", type=float, default=None, help="the server's --max-body-mb (default: its own)")
    ap.add_argument("--bursts", type=int, default=1, help="bursts sent one after another (settled memory after each)")
    args = ap.parse_args()

    port = free_port()
    argv = ["serve", str(Path(args.export).resolve()), "--host", "127.0.0.1", "--port", str(port)]
    if args.max_body_mb is not None:
        argv += ["--max-body-mb", f"{args.max_body_mb:g}"]
    env = {**os.environ, "PYTHONPATH": str(Path(args.code).resolve()), "CUDA_VISIBLE_DEVICES": ""}
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-c", _SERVE, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                              cwd=tempfile.gettempdir())
    try:
        name = Path(args.export).resolve().name
        deadline = time.monotonic() + 180
        while True:
            try:
                status, meta = request(port, "GET", f"/v1/models/{name}/metadata", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                print(log.read().decode(errors="replace")[-3000:], file=sys.stderr)
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        body = make_body(json.loads(meta), args.mb)
        time.sleep(2)
        rest = rss_mb(server.pid)
        peak = [rest]
        done = threading.Event()

        def watch():
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], rss_mb(server.pid))
                except OSError:
                    return
                time.sleep(0.05)

        statuses: list[int | str] = []

        def send():
            try:
                statuses.append(request(port, "POST", f"/v1/models/{name}:predict", body)[0])
            except OSError as e:
                statuses.append(type(e).__name__)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        settled = []
        t0 = time.monotonic()
        for _ in range(args.bursts):
            senders = [threading.Thread(target=send) for _ in range(args.requests)]
            for t in senders:
                t.start()
            for t in senders:
                t.join(timeout=600)
            time.sleep(3)
            settled.append(rss_mb(server.pid))
        wall = time.monotonic() - t0
        done.set()
        hwm = rss_mb(server.pid, "VmHWM")
        names = [str(x) for x in statuses]
        counts = {k: names.count(k) for k in sorted(set(names))}
        print(f"serve ({args.code}): {args.bursts} burst(s) of {args.requests} concurrent requests of "
              f"{len(body) / 2**20:.0f} MB; statuses {counts}; {wall:.0f} s")
        print(f"  resident memory: at rest {rest:.0f} MB, peak {max(peak[0], hwm):.0f} MB, "
              f"settled {', '.join(f'{m:.0f}' for m in settled)} MB (3 s after each burst)")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
