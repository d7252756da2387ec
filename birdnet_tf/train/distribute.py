"""Distribution strategies of ``train.strategy``: one device, several local GPUs, several machines.

- ``one_device``: TensorFlow's default strategy (what ``train`` always did);
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every local GPU (or, on a machine
  without GPU, every logical CPU device: tests split the CPU in two);
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster that the
  ``TF_CONFIG`` environment variable names (TensorFlow's convention: ``{"cluster": {"worker":
  ["host:port", …]}, "task": {"type": "worker", "index": i}}``; worker 0 is the chief);
- ``auto``: ``multi_worker`` when ``TF_CONFIG`` names a cluster of more than one task,
  ``mirrored`` with two or more local GPUs, else ``one_device``.

``multi_worker`` trains with :mod:`birdnet_tf.train.custom_loop` (Keras 3's ``fit`` fails under
``MultiWorkerMirroredStrategy``, keras-team/keras#20585), the others with Keras' ``fit``.

``data.batch_size`` is the batch of one replica: the global batch is ``data.batch_size ×
replicas`` and an epoch has correspondingly fewer steps. The learning rate is **not** scaled
automatically (README "Scaling out" gives the linear rule to apply by hand).

The strategy must exist before TensorFlow runs anything else in the process (collective ops are
configured at start-up), so :func:`resolve` is called first thing in
:func:`birdnet_tf.train.trainer.train` and cached for the process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from birdnet_tf.config import Config
from birdnet_tf.errors import ConfigError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


@dataclass
class Distribution:
    """The strategy of a run and this process's place in it."""

    strategy: Any  # tf.distribute.Strategy
    kind: str  # one_device | mirrored | multi_worker
    worker_index: int = 0
    num_workers: int = 1

    @property
    def chief(self) -> bool:
        """True on the worker that writes the run files (worker 0, or the only process)."""
        return self.worker_index == 0

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def describe(self) -> str:
        where = f", worker {self.worker_index} of {self.num_workers}" if self.num_workers > 1 else ""
        return f"strategy {self.kind} ({self.replicas} replica(s){where})"


def read_tf_config(env: dict | None = None) -> dict | None:
    """``TF_CONFIG`` parsed and checked: None when unset or empty; clear errors when malformed.

    Returns:
        ``{"workers": [...], "index": i}`` of the cluster's workers (a ``chief`` entry, if any, counts
        as worker 0).
    """
    raw = (os.environ if env is None else env).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not JSON ({e.msg} at character {e.pos}): {raw[:80]!r}") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict):
        raise ConfigError('TF_CONFIG must be a JSON object with a "cluster" object, e.g. '
                          '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}')
    cluster, task = tf_config["cluster"], tf_config.get("task") or {}
    workers = list(cluster.get("chief") or []) + list(cluster.get("worker") or [])
    if not workers or not all(isinstance(w, str) and ":" in w for w in workers):
        raise ConfigError(f"TF_CONFIG cluster names no workers as \"host:port\" strings: {cluster!r}")
    kind, index = task.get("type", "worker"), task.get("index", 0)
    if kind not in ("chief", "worker"):
        raise ConfigError(f"TF_CONFIG task type must be chief or worker for training, not {kind!r}")
    base = len(cluster.get("chief") or []) if kind == "worker" else 0
    size = len(cluster.get(kind) or [])
    if not isinstance(index, int) or not 0 <= index < size:
        raise ConfigError(f"TF_CONFIG task index {index!r} is out of range: the cluster has {size} {kind}(s) "
                          f"(index 0..{size - 1})")
    return {"workers": workers, "index": base + index}


_CACHE: dict[str, Distribution] = {}


def resolve(cfg: Config, log=print) -> Distribution:
    """The :class:`Distribution` of ``train.strategy`` (made once per process, see the module docstring)."""
    name = cfg.train.strategy
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, not '{name}'")
    cluster = read_tf_config()
    if name == "auto":
        import tensorflow as tf

        if cluster and len(cluster["workers"]) > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) >= 2:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker" and not cluster:
        raise ConfigError("train.strategy=multi_worker needs the TF_CONFIG environment variable naming the "
                          "cluster (README \"Scaling out\")")
    if name in _CACHE:
        return _CACHE[name]
    import tensorflow as tf

    if name == "one_device":
        dist = Distribution(tf.distribute.get_strategy(), name)
    elif name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        dist = Distribution(tf.distribute.MirroredStrategy(devices), name)
    else:
        dist = Distribution(tf.distribute.MultiWorkerMirroredStrategy(), name, cluster["index"],
                            len(cluster["workers"]))
    _CACHE[name] = dist
    log(dist.describe())
    return dist


def per_worker_rows(rows, index: int, count: int):
    """Worker ``index``'s share of ``count`` of the training files (every ``count``-th row from
    ``index`` of a DataFrame or an array, e.g. the files' metadata features): each file is read
    by one worker only."""
    if count <= 1:
        return rows
    return rows.iloc[index::count] if hasattr(rows, "iloc") else rows[index::count]
