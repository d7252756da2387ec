"""Frozen, typed configuration: one dataclass per stage, one :class:`Config` for a run.

Every default lives here and only here. A recipe (YAML or JSON; the shipped ones live in
``birdnet_tf/recipes/`` and are found by name) overrides any subset of fields, and may
name a ``base`` recipe whose settings it inherits (:func:`read_recipe`); command-line
``section.field=value`` overrides win over the recipe. The full resolved config is saved as ``config.json`` beside every
artefact (run folder, export), together with the package version.

Units are in the field names (``_hz``, ``_s``, ``_db``); derived values are properties.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from birdnet_tf.errors import ConfigError


@dataclass(frozen=True)
class AudioConfig:
    """How audio is stored for training and fed to the model."""

    sample_rate_hz: int = 22050


@dataclass(frozen=True)
class FrontendConfig:
    """The in-model spectrogram frontend: waveform ``(batch, samples)`` → ``(batch, frames, mels)``."""

    kind: str = "mel"  # mel (the settings below) | chunks (the 2018 baseline's 0..1 chunk images, section chunks)
    n_fft: int = 1024
    hop_length: int = 315  # 70 frames/s at 22,050 Hz, as in the OFAI system
    n_mels: int = 80
    fmin_hz: float = 150.0
    fmax_hz: float = 10000.0
    filterbank: str = "mel"  # mel (fixed) | mel_learn (OFAI: trainable triangle positions, starting at the mel bank)
    filterbank_stretch: float = 0.0  # training only: stretch the bank by a random factor in [1-s, 1+s] per example
    power: float = 2.0  # 1 = magnitude, 2 = power spectrogram
    # compression of the mel energies: log | log1p | none, or OFAI's learnable per-band log1p_learn
    # (log(1 + e^a x)) | pow_learn (x^sigmoid(a), starts at sqrt) | pcen (learnable s, alpha, delta, r)
    magnitude: str = "log"
    log_offset: float = 1e-6
    frontend_lr_scale: float = 1.0  # learning-rate multiplier of the frontend's parameters (OFAI: 10)
    center_bands: bool = True  # subtract each band's mean over the excerpt (per recording)
    band_norm: bool = True  # per-band standardisation (batch norm without scale/shift)


@dataclass(frozen=True)
class DataConfig:
    """Dataset split, excerpting, targets and batching."""

    excerpt_s: float = 3.0  # training excerpt length = evaluation window length
    eval_hop_s: float = 3.0  # hop between evaluation windows
    max_eval_windows: int = 32  # per file during training's validation, evenly spread over long files
    background_weight: float = 0.5  # target value of background species in the label set
    split_by: str = "auto"  # auto (a split column if any, else recordist, else class) | column | recordist | class
    val_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 32
    excerpts_per_file_s: float = 10.0  # an epoch draws ceil(duration / this) excerpts per file ...
    max_excerpts_per_file: int = 8  # ... at most this many
    min_excerpts_per_file: int = 1
    file_pooling: str = "mean"  # pooling of window scores per file in validation
    min_signal_score: float = 0.0  # > 0: drop training excerpts whose baseline signal/noise score is lower
    # OFAI bucketed excerpts: > excerpt_s makes training excerpts between excerpt_s and this
    # length; files are sorted into length_buckets buckets by duration and each batch draws from
    # one bucket, with one excerpt length (its shortest file's, within the bounds); 0 = off
    excerpt_max_s: float = 0.0
    length_buckets: int = 10


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentation; each is the identity when its probability is 0."""

    gain_prob: float = 0.8
    gain_db: float = 6.0  # uniform in ±gain_db
    shift_prob: float = 0.0  # circular shift; redundant with random excerpt starts (short files loop from a random point)
    noise_prob: float = 0.5
    noise_snr_db: tuple[float, float] = (3.0, 30.0)
    # colour of the added noise: power spectrum ~ 1/f^beta with beta uniform in this range per
    # waveform (0 white, 1 pink, 2 brown: wind, rain, traffic and distant crowds are coloured)
    noise_beta: tuple[float, float] = (0.0, 0.0)
    mask_prob: float = 0.5  # SpecAugment-style masks, applied in the model after the frontend
    freq_masks: int = 2
    freq_mask_bins: int = 8
    time_masks: int = 2
    time_mask_frames: int = 25
    # the 2018 baseline's image augmentations (frontend.kind=chunks): names from
    # birdnet_tf.data.image_augment, e.g. roll_v,noise_chunk; each try succeeds with image_aug_prob
    image_augs: tuple[str, ...] = ()
    image_aug_prob: float = 0.5
    image_aug_max: int = 2  # at most this many per example
    # OFAI 2018 augmentations (birdnet_tf.data.spec_augment), all off at probability 0
    mixup_prob: float = 0.0  # per example: mixed with another of its batch (waveforms and targets)
    mixup_alpha: float = 0.3  # mixing weight ~ Beta(alpha, alpha)
    stretch_prob: float = 0.0  # random time stretch of the spectrogram, resampled to the same frames
    stretch_max: float = 0.15  # factor in [1/(1+s), 1+s]
    freq_shift_prob: float = 0.0  # shift along the band axis, edge bands repeated
    freq_shift_max_bins: int = 4
    filter_prob: float = 0.0  # random smooth gain curve across bands, added to the log spectrogram
    filter_max_db: float = 10.0  # the curve stays within ±filter_max_db


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, chosen by name from the model registry."""

    name: str = "ismir2016"
    width: float = 0.5  # multiplier for convolution filters (1.0 = OFAI's 32/64)
    dense_units: int = 128
    conv_groups: int = 1  # ismir2016: groups of the grouped 3×3 convolutions c2–c5 (1 = ordinary convolutions)
    preset: str = ""  # ismir2016: "" (width, dense_units as set) | wide (OFAI's large net: width 1, dense_units 1024)
    dropout: float = 0.3
    temporal_pooling: str = "logmeanexp:1"  # max | mean | logmeanexp:a | noisy-or | attention:K (K learned heads)
    output_activation: str = "softmax"  # softmax | sigmoid
    # the 2018 baseline's CNNs (kahl2018_baseline, kahl2018_resnet); ismir2016 ignores these
    filters: tuple[int, ...] = (16, 32, 64, 128)  # per conv group / residual stack (FILTERS)
    resnet_k: int = 2  # ResNet filter multiplier (RESNET_K)
    resnet_n: int = 2  # residual blocks per stack (RESNET_N)
    nonlinearity: str = "relu"  # relu | lrelu | vlrelu | elu
    batch_norm: bool = True
    downsample: str = "maxpool"  # maxpool | strided: how each group / stack halves time and frequency


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, logging and checkpoints."""

    epochs: int = 50
    steps_per_epoch: int = 0  # 0 = derived from the dataset (one pass of sampled excerpts)
    optimizer: str = "adamw"  # adamw | adam | sgd | nesterov (SGD with Nesterov momentum)
    momentum: float = 0.9  # sgd and nesterov only; 0 = plain SGD
    learning_rate: float = 3e-3
    min_learning_rate: float = 1e-5  # end of cosine / linear; floor of step / root
    # cosine | constant | step | linear | root (lr / sqrt(epoch), the 2018 baseline's) | plateau (OFAI's:
    # × lr_step_factor when train.monitor has not improved for lr_plateau_patience epochs, at most lr_plateau_drops times)
    schedule: str = "cosine"
    lr_step_epochs: float = 10.0  # step: multiply the learning rate by lr_step_factor every this many epochs
    lr_step_factor: float = 0.1
    lr_plateau_patience: int = 3  # plateau: epochs without improvement of train.monitor before a drop
    lr_plateau_drops: int = 3  # plateau: most drops (OFAI: 3)
    warmup_epochs: float = 1.0  # every schedule: linear ramp from 0.1 × learning_rate over these epochs
    weight_decay: float = 1e-4  # decoupled (AdamW-style) decay, applied by every optimizer; 0 = off
    init_weights: str = ""  # a .keras model or .weights.h5 to start a new run from (not applied on resume)
    init_skip_output: bool = False  # load all but the output layer frame_logits (fine-tune on other classes)
    loss: str = "cce"  # cce (softmax cross-entropy) | bce | ce_bgtopk:k (bce ignoring the k top-scoring non-targets)
    label_smoothing: float = 0.0
    early_stopping_patience: int = 0  # epochs without val MLRAP improvement; 0 = off
    mixed_precision: bool = True  # used on a GPU only; float32 on CPU
    monitor: str = "val_mlrap_bg"
    # auto (≥2 local GPUs: mirrored; TF_CONFIG naming a cluster: multi_worker; else one device) |
    # one_device | mirrored | multi_worker; data.batch_size is per replica (global = × replicas)
    strategy: str = "auto"


@dataclass(frozen=True)
class ChunkConfig:
    """The 2018 baseline's spectrogram chunks (``birdnet-tf extract``, REFERENCE §1).

    Fixed-length chunks of a recording become 0..1 spectrogram images of
    ``width`` frames × ``height`` bands; a rule-based signal/noise score decides
    which chunks contain bird sound.
    """

    sample_rate_hz: int = 44100
    chunk_s: float = 1.0  # SPEC_LENGTH
    overlap_s: float = 0.25  # SPEC_OVERLAP: consecutive chunks overlap by this much (step = chunk - overlap)
    min_chunk_s: float = 1.0  # SPEC_MINLEN: shorter chunks are dropped; the last one is zero-padded
    spectrogram: str = "mel"  # mel | linear
    width: int = 256  # image width = frames per chunk
    height: int = 128  # image height = mel bands (or linear bins kept)
    fmin_hz: float = 500.0
    fmax_hz: float = 15000.0
    top_db: float = 80.0
    preemphasis: float = 0.0  # 0.95 enables the baseline's optional pre-emphasis
    signal_threshold: float = 0.001  # SPEC_SIGNAL_THRESHOLD: chunks scoring below are noise
    noise_fraction: float = 0.1  # share of rejected chunks saved to the noise/ set
    s2n_interval: tuple[float, float] = (50.0, 2500.0)  # training keeps chunks with score × 1e4 in this range
    max_chunks_per_file: int = 128  # MAX_SPECS_PER_FILE at test time


@dataclass(frozen=True)
class MetadataConfig:
    """OFAI 2018's metadata network: date, time, latitude, longitude and elevation as model input.

    The features are :class:`birdnet_tf.data.metadata.MetadataEncoder`'s (circular date and
    time codes, standardised location and elevation, a missing indicator per field), fitted on
    the training files and saved as ``metadata_encoder.json`` in the run folder.
    """

    use: str = "none"  # none (audio only) | only (metadata MLP alone) | combined (audio logits + a metadata MLP's bias)
    date_size: int = 12  # circular date encoding: 3 (smooth, season) or 12 (one bump per month)
    time_size: int = 12  # circular time-of-day encoding: 3 or 12
    hidden: tuple[int, ...] = (256, 512)  # units of the MLP's hidden layers (OFAI: full:256, full:512)
    batch_norm: bool = True  # batch normalisation after each hidden layer
    noise_std: float = 0.1  # training only: Gaussian noise on the known values (never on indicators or missing fields)
    input_dropout: float = 0.1  # training only: dropout on the input features
    dropout: float = 0.5  # training only: dropout after each hidden layer


@dataclass(frozen=True)
class DistillConfig:
    """Teacher-soft-target distillation (:mod:`birdnet_tf.distill`): the training target of a class a
    teacher knows is ``alpha · teacher + (1 − alpha) · label``; a class no teacher knows is taught by
    its label alone. ``train --teacher PATH`` (repeatable) adds to ``teachers``."""

    # run folders (best.keras), SavedModel exports (serving_default) or teacher tables (CSV / Raven);
    # stored resolved (absolute) in the run's config.json
    teachers: tuple[str, ...] = ()
    weights: str = ""  # weights.json of birdnet-tf ensemble: teachers weighted by it (default: their mean)
    alpha: float = 0.5  # share of the teacher in the target
    temperature: float = 1.0  # teachers' logits / temperature (run folders and tables; exports expose no logits)
    # born-again generations of birdnet-tf distill: each generation's best model teaches the next
    generations: int = 1
    keep_teachers: bool = False  # born-again generations 1.. keep the recipe's teachers beside the previous generation
    # unlabelled recordings (birdnet-tf distill --unlabeled): their share of every batch, scored by the
    # teachers; an excerpt whose highest teacher score is below pseudo_min_confidence teaches nothing
    unlabeled: tuple[str, ...] = ()
    pseudo_ratio: float = 0.25
    pseudo_min_confidence: float = 0.5
    # feature distillation (birdnet_tf.distill.features): an embedding table of the training recordings
    # (teacher birdnet --embeddings); an auxiliary head (dropped at export) fits each excerpt's pooled
    # teacher embedding, reduced to feature_dims principal components of the training windows (0: all),
    # by a cosine loss weighted by feature_weight
    features: str = ""
    feature_weight: float = 1.0
    feature_dims: int = 128


@dataclass(frozen=True)
class Config:
    """A whole run: every stage's settings."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    chunks: ChunkConfig = field(default_factory=ChunkConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    # ----------------------------------------------------------------- derived
    @property
    def excerpt_samples(self) -> int:
        """Samples in one training excerpt / evaluation window."""
        return int(round(self.data.excerpt_s * self.audio.sample_rate_hz))

    @property
    def frames_per_second(self) -> float:
        return self.audio.sample_rate_hz / self.frontend.hop_length

    # ------------------------------------------------------------------ (de)ser
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "config", strict: bool = True) -> "Config":
        """Builds a config from nested dicts; unknown settings are an error, or with
        ``strict=False`` (configs saved by other versions) dropped with a warning."""
        return _build(cls, d or {}, source, strict)

    def replace(self, overrides: dict[str, Any] | list[str] | None, source: str = "override") -> "Config":
        """Returns a copy with ``{"section.field": value}`` or ``["section.field=value"]`` applied."""
        if not overrides:
            return self
        if isinstance(overrides, (list, tuple)):
            overrides = parse_overrides(overrides)
        d = self.to_dict()
        for dotted, value in overrides.items():
            parts = dotted.split(".")
            if len(parts) != 2:
                raise ConfigError(f"{source}: '{dotted}' is not of the form section.field (e.g. train.epochs)")
            section, name = parts
            if section not in d:
                raise ConfigError(f"{source}: unknown section '{section}'; sections are {', '.join(d)}")
            if name not in d[section]:
                raise ConfigError(
                    f"{source}: unknown setting '{dotted}'; {section} has {', '.join(d[section])}")
            d[section][name] = value
        return Config.from_dict(d, source)


def _build(cls, d: dict[str, Any], source: str, strict: bool = True):
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping for {cls.__name__}, got {type(d).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown and not strict:
        import warnings

        warnings.warn(f"{source}: ignoring setting(s) {', '.join(sorted(unknown))} of {cls.__name__} "
                      "(written by another birdnet-tf version)", stacklevel=2)
        d = {k: v for k, v in d.items() if k in known}
    elif unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(sorted(unknown))} in {cls.__name__}; "
            f"known: {', '.join(sorted(known))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        typ = hints[f.name]
        value = d[f.name]
        if is_dataclass(typ):
            kwargs[f.name] = _build(typ, value, f"{source}: {f.name}", strict)
        else:
            kwargs[f.name] = _coerce(value, typ, f"{source}: {cls.__name__}.{f.name}")
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    try:
        if typ is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
        if getattr(typ, "__origin__", None) is tuple:
            if isinstance(value, str):
                value = [v for v in value.strip("()[] ").split(",") if v.strip()]
            args = typ.__args__
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            if len(args) != 2 or args[1] is not Ellipsis:  # fixed-length tuple, e.g. (low, high)
                if len(value) != len(args):
                    raise ConfigError(f"{where}: needs {len(args)} values (e.g. {', '.join(['1'] * len(args))}), "
                                      f"got {value!r}")
            variadic = len(args) == 2 and args[1] is Ellipsis  # tuple[int, ...]: any length, one type
            return tuple(_coerce(v, args[0] if variadic else args[i], where) for i, v in enumerate(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(typ, '__name__', typ)}") from None
    return value


def split_kind(spec: Any) -> tuple[str, str | None]:
    """The one parser of ``kind:param`` settings (``model.temporal_pooling``, ``data.file_pooling``,
    ``train.loss``, ...): ``"logmeanexp:2"`` → ``("logmeanexp", "2")``, ``"max"`` → ``("max", None)``,
    ``"ce_bgtopk:"`` → ``("ce_bgtopk", "")``. Surrounding whitespace is dropped; each caller checks
    the kind and converts the parameter."""
    kind, sep, param = str(spec).strip().partition(":")
    return kind.strip(), (param.strip() if sep else None)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "data.seed=1"]`` → ``{"train.epochs": "3", ...}`` (values coerced later)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.field=value (e.g. train.epochs=3)")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


#: The recipes shipped inside the package; ``--config NAME`` finds them by name
#: (``pipelines/`` holds links to them for browsing a source checkout).
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

#: File endings of recipes: YAML, or JSON (a subset of YAML).
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def recipe_names() -> list[str]:
    """Names of the packaged recipes (``--config NAME``), sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def find_recipe(name: str | os.PathLike, child: Path | None = None) -> Path:
    """The recipe file ``name`` means: a path (for a ``base``, relative to the ``child`` recipe's
    folder; ``.yaml`` may be left off), else a packaged recipe by bare name, with or without ``.yaml``.

    Raises:
        ConfigError: Neither exists (names the packaged recipes).
    """
    p = Path(name).expanduser()
    candidate = child.parent / p if child is not None and not p.is_absolute() else p
    for c in (candidate, candidate.with_name(f"{candidate.name}.yaml")):
        if c.is_file():
            return c
    if len(p.parts) == 1:  # a bare name may be a packaged recipe
        packaged = RECIPES_DIR / (p.name if p.suffix.lower() in RECIPE_SUFFIXES else f"{p.name}.yaml")
        if packaged.is_file():
            return packaged
    known = f"packaged recipes: {', '.join(recipe_names())}"
    if child is not None:
        raise ConfigError(f"{child}: base recipe '{name}' does not exist (looked for {candidate}; {known})")
    raise ConfigError(f"{p}: recipe file does not exist ({known})")


def merge_recipes(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key, recursively; any other value, a list
    included, replaces the base's value whole (``hidden: [64]`` does not extend ``[256, 512]``)."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_recipes(out[key], value)
        else:
            out[key] = value
    return out


def _read_mapping(p: Path) -> dict[str, Any]:
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parser error becomes one clear message
        raise ConfigError(f"{p}: cannot parse recipe: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping of sections (audio, data, model, train, ...) "
                          f"to settings, not a {type(data).__name__}")
    return data


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """A recipe's settings as nested dicts, its ``base`` (and the base's base ...) merged under it
    by :func:`merge_recipes`. ``description`` is the recipe's own; ``base`` is consumed.

    Raises:
        ConfigError: A missing or unreadable recipe or base, or bases that inherit in a loop.
    """
    return _inherit(find_recipe(path), ())


def _inherit(p: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    key = p.resolve()
    if key in chain:
        loop = " -> ".join(c.name for c in (*chain[chain.index(key):], key))
        raise ConfigError(f"{p}: recipes inherit in a loop ({loop})")
    data = _read_mapping(p)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{p}: base must name one recipe (a file or a packaged name), not {base!r}")
    parent = _inherit(find_recipe(base.strip(), child=p), (*chain, key))
    parent.pop("description", None)
    return merge_recipes(parent, data)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Loads a YAML/JSON recipe (a file, or a packaged recipe by name; the defaults when ``path``
    is None), with its ``base`` recipes merged under it, and applies overrides."""
    if path is None:
        cfg = Config()
    else:
        p = find_recipe(path)
        data = read_recipe(p)
        data.pop("description", None)
        cfg = Config.from_dict(data, str(p))
    return cfg.replace(overrides or [], "command line")


def save_config(cfg: Config, path: str | os.PathLike, **extra: Any) -> None:
    """Saves the config plus the package version (and any ``extra`` keys) as JSON."""
    from birdnet_tf import __version__

    from birdnet_tf.fileio import write_json_atomic

    write_json_atomic(path, {"birdnet_tf_version": __version__, **extra, **cfg.to_dict()})


def read_config_json(path: str | os.PathLike) -> tuple[Config, dict[str, Any]]:
    """Reads a ``config.json`` written by :func:`save_config`: (config, extra keys)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no config.json there")
    d = json.loads(p.read_text(encoding="utf-8"))
    sections = {f.name for f in fields(Config)}
    extra = {k: v for k, v in d.items() if k not in sections}
    return Config.from_dict({k: v for k, v in d.items() if k in sections}, str(p), strict=False), extra
