"""``birdnet-tf config --check``: every problem of a resolved config, found before any work.

The rules that tie sections together (sample rates, the excerpt against the model's
receptive field, teachers against the input kind) are checked here, and each stage's own
checks (chunks, metadata, distillation, loss, pooling, schedule, optimizer, model build) are
run in turn, so one pass reports every problem rather than the first the trainer meets.
"""

from __future__ import annotations

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError


def cross_section_problems(cfg: Config) -> list[str]:
    """The problems of ``cfg`` that span sections (no TensorFlow needed)."""
    sr, fe, d, ch = cfg.audio.sample_rate_hz, cfg.frontend, cfg.data, cfg.chunks
    rules = [
        (sr > 0, f"audio.sample_rate_hz must be positive, not {sr}"),
        (d.excerpt_s > 0, f"data.excerpt_s must be positive, not {d.excerpt_s}"),
        (d.eval_hop_s > 0, f"data.eval_hop_s must be positive, not {d.eval_hop_s}"),
        (0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1), not {d.val_fraction}"),
        (d.batch_size >= 1, f"data.batch_size must be >= 1, not {d.batch_size}"),
        (d.excerpt_max_s == 0 or d.excerpt_max_s > d.excerpt_s,
         f"data.excerpt_max_s must be 0 (off) or longer than data.excerpt_s ({d.excerpt_max_s} <= {d.excerpt_s})"),
        (d.excerpt_max_s == 0 or d.length_buckets >= 1, f"data.length_buckets must be >= 1, not {d.length_buckets}"),
        (d.min_signal_score <= 0 or sr == ch.sample_rate_hz,
         f"data.min_signal_score needs audio.sample_rate_hz = chunks.sample_rate_hz ({sr} != {ch.sample_rate_hz})"),
    ]
    if fe.kind == "mel":
        rules += [
            (0 < fe.hop_length <= fe.n_fft,
             f"frontend.hop_length must be in (0, n_fft = {fe.n_fft}], not {fe.hop_length}"),
            (0 <= fe.fmin_hz < fe.fmax_hz <= sr / 2,
             f"frontend: need 0 <= fmin_hz ({fe.fmin_hz}) < fmax_hz ({fe.fmax_hz}) <= audio.sample_rate_hz / 2 "
             f"({sr / 2:g})"),
        ]
    elif fe.kind == "chunks":
        rules += [
            (sr == ch.sample_rate_hz, f"frontend.kind=chunks needs audio.sample_rate_hz = chunks.sample_rate_hz "
                                      f"({sr} != {ch.sample_rate_hz})"),
            (abs(d.excerpt_s - ch.chunk_s) <= 1e-6,
             f"frontend.kind=chunks needs data.excerpt_s = chunks.chunk_s ({d.excerpt_s} != {ch.chunk_s})"),
            (cfg.metadata.use == "none", f"metadata.use={cfg.metadata.use} needs a waveform model "
                                         "(frontend.kind=mel), not one on chunk images"),
        ]
    else:
        rules.append((False, f"frontend.kind must be mel or chunks, not '{fe.kind}'"))
    if cfg.distill.teachers:
        rules.append((fe.kind != "chunks" and cfg.metadata.use == "none",
                      "distill.teachers need a waveform model on a dataset of recordings "
                      "(not frontend.kind=chunks, not metadata.use only/combined)"))
    return [message for ok, message in rules if not ok]


def check_config(cfg: Config) -> list[str]:
    """Every problem found in ``cfg``, one message each (empty: the config is usable).

    The model is built once (with TensorFlow) to compare ``data.excerpt_s`` with its receptive
    field; that is skipped while a simpler check of the same settings fails.
    """
    from birdnet_tf.fileio import quiet_tensorflow

    quiet_tensorflow()
    from birdnet_tf.frontend.chunks import check_chunk_config
    from birdnet_tf.distill.setup import check_distill_config
    from birdnet_tf.models.layers import parse_pooling
    from birdnet_tf.models.metadata import check_metadata_config
    from birdnet_tf.train.losses import parse_loss
    from birdnet_tf.train.optim import make_optimizer
    from birdnet_tf.train.trainer import check_input_length

    problems = cross_section_problems(cfg)

    def attempt(check, *args) -> bool:
        try:
            check(*args)
        except (BirdnetError, ValueError) as e:
            if str(e) not in problems:
                problems.append(str(e))
            return False
        return True

    simple = [attempt(check_chunk_config, cfg.chunks), attempt(check_metadata_config, cfg),
              attempt(check_distill_config, cfg), attempt(parse_loss, cfg.train.loss),
              attempt(parse_pooling, cfg.model.temporal_pooling), attempt(make_optimizer, cfg, 10)]
    if all(simple) and not cross_section_problems(cfg):
        attempt(check_input_length, cfg)
    return problems
