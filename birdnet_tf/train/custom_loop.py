"""The training loop of ``train.strategy=multi_worker``: Keras' own train step under ``strategy.run``.

Keras 3's ``Model.fit`` cannot train under ``MultiWorkerMirroredStrategy``: with more than one
worker it fails with ``ValueError: Attempt to convert a value (PerReplica…)`` (keras-team/keras#20585;
its multi-worker branch of ``reduce_per_replica`` reduces the step's scalar outputs with
``axis=0``). This loop does what ``fit`` does, reducing the step's loss itself:

- **Data**: :func:`distributed_dataset` builds each worker's dataset in
  ``strategy.distribute_datasets_from_function``: worker ``input_pipeline_id`` of
  ``num_input_pipelines`` reads every n-th training file, batched at
  ``get_per_replica_batch_size(global batch)`` (= ``data.batch_size``); every worker runs the
  same number of steps (those of all files at the global batch).
- **Step**: the model's own ``train_step`` (what ``fit`` runs: the compiled loss, reduced over
  the replica's batch and divided by the replicas in sync — a sum over the global batch —,
  ``optimizer.scale_loss`` of a ``LossScaleOptimizer`` under mixed precision, and
  ``apply_gradients``, which sums the gradients over every replica of every worker) in a
  ``tf.function`` under ``strategy.run``; the logged loss is the mean over replicas.
- **Callbacks**: the run's Keras callbacks through ``keras.callbacks.CallbackList``
  (``set_model``, ``on_train_begin``, ``on_epoch_begin/end``, ``on_train_batch_begin/end``,
  ``on_train_end``), as under ``fit``; a progress bar of the steps on the chief's terminal, one
  line per epoch.
- **Validation and decisions**: the chief alone scores the validation files
  (:class:`~birdnet_tf.train.callbacks.FileValidation`, each window predicted on its own copy of
  the weights, no collective op) and :func:`chief_broadcast` hands its ``val_*`` metrics to
  every worker (one all-reduce in which only replica 0, on the chief, contributes). Every
  worker then runs the same callbacks on the same logs — plateau schedule, checkpoints, early
  stopping — so they take the same decisions and stop in the same epoch; the other workers'
  :class:`~birdnet_tf.train.callbacks.RunCheckpoint` writes to their temporary folder
  (TensorFlow's multi-worker guidance: every worker saves, so the saves' reads match).
"""

from __future__ import annotations

import time

import numpy as np

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError


def distributed_dataset(source, files, cfg: Config, dist):
    """The training data of a multi-worker run: ``(examples, distributed dataset)``.

    ``examples`` are the source's :class:`~birdnet_tf.train.sources.Examples` of this worker's
    files (its validation windows are every worker's); the dataset yields per-replica batches.
    """
    import dataclasses

    from birdnet_tf.train.distribute import per_worker_rows

    made = {}

    def dataset_fn(ctx):
        batch = ctx.get_per_replica_batch_size(cfg.data.batch_size * dist.replicas)
        index, count = ctx.input_pipeline_id, ctx.num_input_pipelines
        share = dataclasses.replace(files, train=per_worker_rows(files.train, index, count),
                                    train_meta=None if files.train_meta is None else
                                    per_worker_rows(files.train_meta, index, count))
        source.cfg = cfg.replace([f"data.batch_size={batch}"])
        try:
            examples = source.training(share)
        finally:
            source.cfg = cfg
        made["examples"] = dataclasses.replace(
            examples, what=f"{examples.what} (worker {index}'s share of {len(files.train)} files)")
        return examples.dataset

    dataset = dist.strategy.distribute_datasets_from_function(dataset_fn)
    return made["examples"], dataset


def local_predictor(model):
    """``predict(model, windows)`` for :class:`~birdnet_tf.train.callbacks.FileValidation`: the scores of
    every window on this worker's copy of ``model``'s weights, ``[windows, classes]`` (Keras' ``predict``
    under the strategy would share the windows out across the workers). Traced once per run."""
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(_model, windows) -> np.ndarray:
        out = [np.asarray(call(x), np.float64) for x in windows.dataset]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]))

    return predict


def chief_broadcast(strategy):
    """``broadcast(values)``: the chief's ``values`` (a float vector; any values on the other workers)
    on every worker, through one all-reduce in which only replica 0 (the chief's first) contributes.

    A collective op: every worker must call it, with a vector of the same length, at the same point.
    """
    import tensorflow as tf

    @tf.function
    def share(v):
        def replica_fn(v):
            ctx = tf.distribute.get_replica_context()
            mine = tf.where(tf.equal(ctx.replica_id_in_sync_group, 0), v, tf.zeros_like(v))
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, mine)

        return strategy.experimental_local_results(strategy.run(replica_fn, args=(v,)))[0]

    return lambda values: share(tf.constant(np.asarray(values, np.float64))).numpy()


def train_function(fit_model, strategy):
    """``step(iterator)``: one training step of ``fit_model`` on the next batch of every replica
    (``fit_model.train_step`` under ``strategy.run``, in a ``tf.function``); returns the loss, the
    mean over the replicas of each one's running mean since ``fit_model.reset_metrics()``."""
    import tensorflow as tf

    optimizer = fit_model.optimizer
    if not optimizer.built:  # slot variables are made in the strategy's scope, not inside the step
        with strategy.scope():
            optimizer.build(fit_model.trainable_variables)

    @tf.function
    def step(iterator):
        outputs = strategy.run(fit_model.train_step, args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, outputs["loss"], axis=None)

    return step


def fit(fit_model, dataset, cfg: Config, steps: int, initial_epoch: int, callbacks, dist, log=print) -> None:
    """Trains ``fit_model`` from ``initial_epoch`` to ``train.epochs`` under ``dist``'s strategy
    (see the module docstring); one log line per epoch."""
    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    from birdnet_tf.distill.teachers import plain_model
    from birdnet_tf.train.callbacks import FILE_METRICS, FileValidation
    from birdnet_tf.train.loop import is_tty

    strategy = dist.strategy
    validation = [c for c in callbacks if isinstance(c, FileValidation)]
    others = keras.callbacks.CallbackList([c for c in callbacks if not isinstance(c, FileValidation)],
                                          model=fit_model, epochs=cfg.train.epochs, steps=steps, verbose=0)
    for c in validation:
        c.set_model(fit_model)
        c.predict = local_predictor(plain_model(fit_model))
    val_keys = [f"val_{k}" for k in FILE_METRICS]
    train_step, broadcast = train_function(fit_model, strategy), chief_broadcast(strategy)
    iterator = iter(dataset)
    fit_model.stop_training = False
    others.on_train_begin()
    epoch = initial_epoch
    try:
        for epoch in range(initial_epoch, cfg.train.epochs):
            t0 = time.time()
            fit_model.reset_metrics()
            others.on_epoch_begin(epoch)
            loss = float("nan")
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                       disable=not (is_tty() and dist.chief))
            for step in range(steps):
                others.on_train_batch_begin(step)
                loss = float(train_step(iterator))
                others.on_train_batch_end(step, {"loss": loss})
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.close()
            logs = {"loss": loss}
            if dist.chief:
                for c in validation:
                    c.on_epoch_end(epoch, logs)
            logs.update(zip(val_keys, (float(v) for v in broadcast([logs.get(k, 0.0) for k in val_keys]))))
            others.on_epoch_end(epoch, logs)
            log(f"epoch {epoch + 1}/{cfg.train.epochs} - {time.time() - t0:.0f}s - " +
                " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k in ("loss", *val_keys)))
            if fit_model.stop_training:  # every worker decided it on the same logs
                break
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as e:
        raise BirdnetError(f"{dist.describe()}: another worker of the cluster stopped during epoch {epoch + 1} "
                           f"({type(e).__name__}); relaunch every worker with the same command and TF_CONFIG: "
                           "the run resumes after its last finished epoch") from None
    others.on_train_end()
