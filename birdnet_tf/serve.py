"""``birdnet-tf serve``: exported models behind the TensorFlow Serving v1 REST API (and gRPC).

A stand-in for ``tensorflow_model_server`` where its Docker image cannot run: a client
cannot tell the two apart for the calls below (same URLs, JSON shapes, status codes,
error objects). Any SavedModel signature is served generically: input names, dtypes
and shapes come from the model's ``SignatureDef``.

REST (``aiohttp``)::

    GET  /v1/models/NAME[/versions/V | /labels/L]             model status
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata    signature definitions
    POST /v1/models/NAME[/versions/V | /labels/L]:predict     {"signature_name"?, "instances": [...]}
                                                              → {"predictions": [...]}  (row format)
                                                              {"signature_name"?, "inputs": ...}
                                                              → {"outputs": ...}        (columnar format)

Errors are ``{"error": "..."}`` with 404 (unknown model, version or path), 400 (bad JSON,
shape, dtype, signature or input; TensorFlow errors during inference), 413 (body over
``max_body_mb``) or 503 (too many requests in flight). gRPC (optional, ``grpcio``):
``tensorflow.serving.PredictionService/{Predict,GetModelMetadata}`` and
``ModelService/GetModelStatus``.

What is served (``MODEL_DIR``):

- an export folder (``saved_model.pb``): one model named after the folder (after its
  parent when the folder name is a number, which is then the version; else version 1);
- a TF Serving base path ``NAME/VERSION/``: numbered subfolders, the highest one served;
- a TF Serving ``models.config`` (text protobuf ``model_config_list``): several models,
  with their ``model_version_policy`` (``latest``, ``all``, ``specific``) and
  ``version_labels``. A ``base_path`` that does not exist (``/models/bird`` written for a
  container) is looked up under the config file's folder with leading components
  dropped (``models/bird``, then ``bird``); relative base paths are taken from the
  config file's folder.

Inference runs in a thread pool (TensorFlow releases the GIL); the event loop only moves
bytes. Every request is logged as one line: peer, method, path, status, milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from aiohttp import web

from birdnet_tf.errors import BirdnetError

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
DEFAULT_MAX_BODY_MB = 64.0

_NUMBER = re.compile(r"[0-9]+")
_TARGET = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
_GET_PATH = re.compile(_TARGET + r"(?P<metadata>/metadata)?/?")
_POST_PATH = re.compile(_TARGET + r":(?P<verb>predict|classify|regress)")


class RequestError(Exception):
    """A request the server refuses: ``status`` (HTTP code) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _first_line(text: str) -> str:
    lines = [s.strip() for s in str(text).strip().splitlines() if s.strip()]
    return lines[0] if lines else str(text)


_TF_PREAMBLE = re.compile(r"^(Graph execution error:|Detected at node .* defined at|<stack traces unavailable>)")


def _tf_error_line(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong (what TF Serving would report).

    Eager execution wraps the op's message in ``Graph execution error:`` and a
    ``Detected at node ...`` stack trace; those lines and the indented frames are skipped.
    """
    for line in str(message).splitlines():
        if line.strip() and not line[0].isspace() and not _TF_PREAMBLE.match(line):
            return line.strip()
    return _first_line(message)


# --------------------------------------------------------------------------
# Models: signatures, versions, the registry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature.

    Attributes:
        key: the name clients use (``waveform``).
        dtype: TensorFlow ``DataType`` enum value (``1`` = ``DT_FLOAT``).
        shape: dimensions (``-1`` = any size), or ``None`` when the rank is unknown.
    """

    key: str
    dtype: int
    shape: tuple[int, ...] | None

    @classmethod
    def from_proto(cls, key: str, info) -> TensorInfo:
        shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
        return cls(key, int(info.dtype), shape)

    @property
    def dtype_name(self) -> str:
        from tensorflow.core.framework import types_pb2

        return types_pb2.DataType.Name(self.dtype)

    @property
    def kind(self) -> str:
        """``f`` (floating), ``i`` (integer), ``b`` (bool), ``s`` (string) or ``?`` (other)."""
        import tensorflow as tf

        dt = tf.dtypes.as_dtype(self.dtype)
        if dt == tf.string:
            return "s"
        if dt.is_bool:
            return "b"
        if dt.is_floating:
            return "f"
        if dt.is_integer:
            return "i"
        return "?"

    @property
    def np_dtype(self):
        import tensorflow as tf

        return object if self.kind == "s" else tf.dtypes.as_dtype(self.dtype).as_numpy_dtype

    def describe(self) -> str:
        shape = "unknown rank" if self.shape is None else "[" + ", ".join(map(str, self.shape)) + "]"
        return f"{self.key} ({self.dtype_name} {shape})"


@dataclass
class Signature:
    """A callable signature of a loaded SavedModel."""

    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    fn: Callable = field(repr=False)

    def describe_inputs(self) -> str:
        return ", ".join(t.describe() for t in self.inputs.values()) or "no inputs"


class Servable:
    """One version of one model, loaded with ``tf.saved_model.load`` (tag ``serve``).

    Args:
        name: the model name clients use in URLs.
        version: the version number.
        path: the SavedModel folder (``saved_model.pb``, ``variables/``).
    """

    def __init__(self, name: str, version: int, path: str | os.PathLike):
        import tensorflow as tf
        from google.protobuf.message import DecodeError
        from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

        self.name, self.version, self.path = name, int(version), Path(path)
        pb = self.path / "saved_model.pb"
        if not pb.is_file():
            raise BirdnetError(f"{self.path}: not a SavedModel folder (no saved_model.pb)")
        saved = saved_model_pb2.SavedModel()
        try:
            saved.ParseFromString(pb.read_bytes())
        except DecodeError as e:
            raise BirdnetError(f"{pb}: not a valid SavedModel protobuf ({e})") from None
        meta = next((m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags), None)
        if meta is None:
            raise BirdnetError(f"{pb}: no MetaGraph tagged 'serve' (TF Serving needs one)")
        #: every SignatureDef of the 'serve' MetaGraph, as TF Serving's metadata lists them
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta.signature_def)
        try:
            self._loaded = tf.saved_model.load(str(self.path), tags=["serve"])
        except Exception as e:  # noqa: BLE001 - any load failure is the user's model
            raise BirdnetError(f"{self.path}: TensorFlow cannot load this SavedModel: {_first_line(e)}") from None
        self.signatures: dict[str, Signature] = {}
        for key, sig_def in self.signature_defs.items():
            if key not in self._loaded.signatures:
                continue  # e.g. __saved_model_init_op: listed in metadata, not callable
            self.signatures[key] = Signature(
                key, {k: TensorInfo.from_proto(k, v) for k, v in sig_def.inputs.items()},
                {k: TensorInfo.from_proto(k, v) for k, v in sig_def.outputs.items()},
                self._loaded.signatures[key])

    def signature(self, name: str | None) -> Signature:
        """The signature ``name`` (default ``serving_default``); 400 if there is none."""
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise RequestError(400, f'Serving signature name: "{name}" not found in signature def; '
                                    f"model {self.name} version {self.version} has: {', '.join(sorted(self.signatures))}")
        return self.signatures[name]

    def metadata(self) -> dict:
        """``GET .../metadata`` body: model spec and every SignatureDef in TF Serving's JSON form."""
        from google.protobuf import json_format

        sigs = {k: json_format.MessageToDict(v, preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True)
                for k, v in self.signature_defs.items()}
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
                "metadata": {"signature_def": {"signature_def": sigs}}}

    def predict(self, signature_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one signature on named arrays (already of the signature's dtypes).

        Raises:
            RequestError: 400 for missing/unknown inputs, wrong ranks or sizes, and errors
                TensorFlow raises while running the graph (their first line).
        """
        import tensorflow as tf

        sig = self.signature(signature_name)
        missing = [k for k in sig.inputs if k not in inputs]
        unknown = [k for k in inputs if k not in sig.inputs]
        if missing or unknown:
            what = "; ".join(([f"input '{k}' missing" for k in missing]) + [f"unknown input '{k}'" for k in unknown])
            raise RequestError(400, f"{what}; signature '{sig.name}' takes: {sig.describe_inputs()}")
        for key, arr in inputs.items():
            spec = sig.inputs[key]
            if spec.shape is None:
                continue
            if arr.ndim != len(spec.shape) or any(d >= 0 and d != n for d, n in zip(spec.shape, arr.shape)):
                raise RequestError(400, f"input '{key}' has shape {list(arr.shape)} but signature '{sig.name}' "
                                        f"expects {list(spec.shape)} (rank {len(spec.shape)}, -1 = any size)")
        try:
            out = sig.fn(**{k: tf.constant(v, dtype=tf.dtypes.as_dtype(sig.inputs[k].dtype))
                            for k, v in inputs.items()})
        except tf.errors.OpError as e:
            raise RequestError(400, _tf_error_line(e.message)) from None
        except (TypeError, ValueError) as e:
            raise RequestError(400, _first_line(e)) from None
        return {k: v.numpy() for k, v in out.items()}


@dataclass
class ModelSource:
    """Where one model's versions live, before loading."""

    name: str
    versions: dict[int, Path]
    labels: dict[str, int] = field(default_factory=dict)


def _version_folders(base: Path) -> tuple[dict[int, Path], list[Path]]:
    """Numbered subfolders of ``base`` holding ``saved_model.pb``, and numbered ones without it."""
    found, empty = {}, []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.is_dir() and _NUMBER.fullmatch(d.name):
            if (d / "saved_model.pb").is_file():
                found[int(d.name)] = d
            else:
                empty.append(d)
    return found, empty


def _apply_policy(name: str, base: Path, versions: dict[int, Path], policy=None) -> dict[int, Path]:
    kind = policy.WhichOneof("policy_choice") if policy is not None else None
    if kind == "all":
        return dict(sorted(versions.items()))
    if kind == "specific":
        wanted = sorted(int(v) for v in policy.specific.versions)
        missing = [v for v in wanted if v not in versions]
        if missing:
            raise BirdnetError(f"{base}: model '{name}' asks for version(s) {missing} that have no "
                               f"saved_model.pb there (found: {sorted(versions) or 'none'})")
        return {v: versions[v] for v in wanted}
    n = (policy.latest.num_versions if kind == "latest" else 0) or 1
    return {v: versions[v] for v in sorted(versions)[-n:]}


def _resolve_base_path(base_path: str, config_file: Path, name: str) -> Path:
    if re.match(r"^[a-z][a-z0-9+.-]*://", base_path):
        raise BirdnetError(f"{config_file}: base_path '{base_path}' of model '{name}' is remote; only local folders")
    p = Path(base_path)
    folder = config_file.parent
    if not p.is_absolute():
        tried = [folder / p, Path.cwd() / p]
    else:
        tried = [p] + [folder.joinpath(*p.parts[i:]) for i in range(1, len(p.parts))]
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    raise BirdnetError(f"{config_file}: base_path '{base_path}' of model '{name}' not found "
                       f"(tried {', '.join(str(t) for t in tried)})")


def _read_model_config(path: Path) -> list[ModelSource]:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), cfg)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise BirdnetError(f"{path}: not a valid TF Serving model config ({_first_line(e)})") from None
    if cfg.WhichOneof("config") != "model_config_list" or not cfg.model_config_list.config:
        raise BirdnetError(f"{path}: holds no 'model_config_list {{ config {{ ... }} }}' entries")
    sources, names = [], set()
    for entry in cfg.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise BirdnetError(f"{path}: every config needs a name and a base_path")
        if entry.name in names:
            raise BirdnetError(f"{path}: model name '{entry.name}' appears twice")
        if "/" in entry.name or ":" in entry.name:
            raise BirdnetError(f"{path}: model name '{entry.name}' may not contain '/' or ':'")
        if entry.model_platform not in ("", "tensorflow"):
            raise BirdnetError(f"{path}: model '{entry.name}' has model_platform '{entry.model_platform}'; "
                               "only 'tensorflow' SavedModels are served")
        names.add(entry.name)
        base = _resolve_base_path(entry.base_path, path, entry.name)
        versions, _ = _version_folders(base)
        if not versions:
            raise BirdnetError(f"{base}: model '{entry.name}' has no numbered version folders with saved_model.pb")
        policy = entry.model_version_policy if entry.HasField("model_version_policy") else None
        chosen = _apply_policy(entry.name, base, versions, policy)
        labels = dict(entry.version_labels)
        for label, v in labels.items():
            if v not in chosen:
                raise BirdnetError(f"{path}: version label '{label}' of model '{entry.name}' points to "
                                   f"version {v}, which is not served (served: {sorted(chosen)})")
        sources.append(ModelSource(entry.name, chosen, labels))
    return sources


def find_models(model_dir: str | os.PathLike, model_name: str | None = None, log=print) -> list[ModelSource]:
    """What ``MODEL_DIR`` holds: an export folder, a TF Serving base path or a models.config.

    Raises:
        BirdnetError: when it is none of these, or a config entry is unusable.
    """
    path = Path(model_dir)
    if not path.exists():
        raise BirdnetError(f"{path}: does not exist")
    if path.is_file():
        if model_name:
            raise BirdnetError(f"{path}: --model-name does not apply to a models.config (it names its models)")
        return _read_model_config(path)
    if model_name is not None and (not model_name or "/" in model_name or ":" in model_name):
        raise BirdnetError(f"--model-name '{model_name}': must be non-empty without '/' or ':'")
    if (path / "saved_model.pb").is_file():
        numbered = bool(_NUMBER.fullmatch(path.name))
        name = model_name or (path.resolve().parent.name if numbered else path.resolve().name)
        return [ModelSource(name, {int(path.name) if numbered else 1: path})]
    versions, empty = _version_folders(path)
    for d in empty:
        log(f"warning: {d}: numbered folder without saved_model.pb, not served")
    if versions:
        return [ModelSource(model_name or path.resolve().name, _apply_policy(path.name, path, versions))]
    raise BirdnetError(f"{path}: neither an export folder (saved_model.pb), nor a TF Serving base path "
                       "(numbered version folders such as 1/ holding saved_model.pb), nor a models.config file")


class ModelRegistry:
    """The loaded models: ``{name: {version: Servable}}`` plus version labels."""

    def __init__(self, models: dict[str, dict[int, Servable]], labels: dict[str, dict[str, int]] | None = None):
        self.models = models
        self.labels = labels or {}

    @classmethod
    def load(cls, model_dir: str | os.PathLike, model_name: str | None = None, log=print) -> ModelRegistry:
        """Finds (see :func:`find_models`) and loads every served version."""
        models, labels = {}, {}
        for src in find_models(model_dir, model_name, log=log):
            models[src.name] = {}
            for version, path in src.versions.items():
                t0 = time.perf_counter()
                models[src.name][version] = Servable(src.name, version, path)
                sigs = ", ".join(sorted(models[src.name][version].signatures))
                log(f"loaded model '{src.name}' version {version} from {path} "
                    f"(signatures: {sigs}; {time.perf_counter() - t0:.1f} s)")
            labels[src.name] = dict(src.labels)
        return cls(models, labels)

    def _known(self) -> str:
        return "; ".join(f"{n} (versions {', '.join(map(str, sorted(v)))})" for n, v in self.models.items())

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request names: latest version unless ``version`` or ``label``; 404 if none."""
        versions = self.models.get(name)
        if not versions:
            raise RequestError(404, f"Servable not found for request: Latest({name}); "
                                    f"this server serves: {self._known()}")
        if label is not None:
            if label not in self.labels.get(name, {}):
                raise RequestError(404, f"Unrecognized servable version label: {label} (model {name})")
            version = self.labels[name][label]
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise RequestError(404, f"Servable not found for request: Specific({name}, {version}); "
                                    f"served versions of {name}: {', '.join(map(str, sorted(versions)))}")
        return versions[version]

    def statuses(self, name: str, version: int | None = None, label: str | None = None) -> list[Servable]:
        if name not in self.models:
            raise RequestError(404, f"Could not find any versions of model {name}; this server serves: {self._known()}")
        if version is None and label is None:
            return [self.models[name][v] for v in sorted(self.models[name], reverse=True)]
        return [self.resolve(name, version, label)]


# --------------------------------------------------------------------------
# JSON <-> arrays (TF Serving's REST encoding)
# --------------------------------------------------------------------------


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _ragged_detail(value, path="") -> str | None:
    """Where a nested list stops being rectangular, e.g. ``"[1] has 3 items, [0] has 2"``."""
    if not isinstance(value, list) or not value:
        return None
    lengths = [len(v) if isinstance(v, list) else None for v in value]
    if any(n != lengths[0] for n in lengths):
        i = next(i for i, n in enumerate(lengths) if n != lengths[0])

        def size(n):
            return "a scalar" if n is None else f"{n} item" + ("" if n == 1 else "s")

        return f"{path}[{i}] has {size(lengths[i])} but {path}[0] has {size(lengths[0])}"
    for i, v in enumerate(value):
        detail = _ragged_detail(v, f"{path}[{i}]")
        if detail:
            return detail
    return None


def _decode_strings(value, what: str):
    if isinstance(value, list):
        return [_decode_strings(v, what) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value) and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise RequestError(400, f"{what}: invalid base64 in a {{\"b64\": ...}} value") from None
    raise RequestError(400, f"{what} must hold strings (DT_STRING); got {type(value).__name__}")


def json_to_array(value: Any, spec: TensorInfo, what: str) -> np.ndarray:
    """A JSON value (nested lists) as an array of ``spec``'s dtype; 400 on ragged or mistyped values."""
    if spec.kind == "s":
        arr = np.array(_decode_strings(value, what), dtype=object)
        if arr.dtype == object and any(isinstance(x, list) for x in arr.flat):
            raise RequestError(400, f"{what} is ragged: {_ragged_detail(value)}; every row must have the same shape")
        return arr
    try:
        arr = np.asarray(value)
    except ValueError:
        detail = _ragged_detail(value) or "nested lists of different lengths"
        raise RequestError(400, f"{what} is ragged: {detail}; every row must have the same shape "
                                "(pad them, or send them in separate requests)") from None
    expected = {"f": "numbers", "i": "integers", "b": "true/false"}.get(spec.kind)
    if expected is None:
        raise RequestError(400, f"{what}: dtype {spec.dtype_name} is not supported by this server")
    if arr.size:
        got = arr.dtype.kind
        if got in "US":
            raise RequestError(400, f"{what} must hold {expected} ({spec.dtype_name}); got strings")
        if got == "O":
            raise RequestError(400, f"{what} must hold {expected} ({spec.dtype_name}); got null or objects")
        if not ((spec.kind == "f" and got in "fiu") or (spec.kind == "i" and got in "iu")
                or (spec.kind == "b" and got == "b")):
            name = {"b": "true/false", "f": "non-integer numbers", "c": "complex numbers"}.get(got, "numbers")
            raise RequestError(400, f"{what} must hold {expected} ({spec.dtype_name}); got {name}")
        if spec.kind == "i":
            info = np.iinfo(spec.np_dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise RequestError(400, f"{what}: values out of range for {spec.dtype_name}")
    with np.errstate(over="ignore"):
        return arr.astype(spec.np_dtype)


def array_to_json(arr: np.ndarray, name: str):
    """An output array as JSON-ready nested lists; strings as text, or ``{"b64": ...}`` when binary.

    As in TF Serving, outputs whose name ends in ``_bytes`` are always base64-encoded.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "OS":
        return arr.tolist()

    def text(b):
        if isinstance(b, str):
            return b
        if not name.endswith("_bytes"):
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(b).decode("ascii")}

    flat = [text(b) for b in arr.reshape(-1).tolist()]
    if arr.ndim == 0:
        return flat[0]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(arr.shape).tolist()


def _parse_predict(doc: Any, servable: Servable) -> tuple[Signature, bool, dict[str, np.ndarray]]:
    """``(signature, row_format, inputs)`` of a decoded :predict body."""
    if not isinstance(doc, dict):
        raise RequestError(400, 'request body must be a JSON object with "instances" or "inputs"')
    sig_name = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(sig_name, str):
        raise RequestError(400, '"signature_name" must be a string')
    sig = servable.signature(sig_name)
    if "instances" in doc and "inputs" in doc:
        raise RequestError(400, 'request body may contain "instances" (row format) or "inputs" (columnar), not both')
    names = list(sig.inputs)
    arrays = {}
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise RequestError(400, '"instances" must be a list (one item per example)')
        if not instances:
            raise RequestError(400, '"instances" is empty; send at least one instance')
        named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
        if any(named):
            if not all(named):
                raise RequestError(400, '"instances" mixes objects and plain values; use one form for all')
            for i, inst in enumerate(instances):
                extra = [k for k in inst if k not in sig.inputs]
                if extra:
                    raise RequestError(400, f"instance {i} has unknown input '{extra[0]}'; "
                                            f"signature '{sig.name}' takes: {sig.describe_inputs()}")
            for key in names:
                lacking = next((i for i, inst in enumerate(instances) if key not in inst), None)
                if lacking is not None:
                    raise RequestError(400, f"instance {lacking} lacks input '{key}'; "
                                            f"signature '{sig.name}' takes: {sig.describe_inputs()}")
                arrays[key] = json_to_array([inst[key] for inst in instances], sig.inputs[key],
                                            f"input '{key}' of \"instances\"")
        else:
            if len(names) != 1:
                raise RequestError(400, f"signature '{sig.name}' takes {len(names)} inputs; each instance must be "
                                        f"an object naming them: {sig.describe_inputs()}")
            arrays[names[0]] = json_to_array(instances, sig.inputs[names[0]], f"input '{names[0]}' of \"instances\"")
        return sig, True, arrays
    if "inputs" in doc:
        inputs = doc["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            unknown = [k for k in inputs if k not in sig.inputs]
            if unknown:
                raise RequestError(400, f"unknown input '{unknown[0]}'; signature '{sig.name}' takes: "
                                        f"{sig.describe_inputs()}")
            arrays = {k: json_to_array(v, sig.inputs[k], f"input '{k}'") for k, v in inputs.items()}
        elif len(names) == 1:
            arrays[names[0]] = json_to_array(inputs, sig.inputs[names[0]], f"input '{names[0]}'")
        else:
            raise RequestError(400, f'signature \'{sig.name}\' takes {len(names)} inputs; "inputs" must be an object '
                                    f"naming them: {sig.describe_inputs()}")
        return sig, False, arrays
    raise RequestError(400, 'request body lacks "instances" (row format) or "inputs" (columnar format)')


def _format_predict(sig: Signature, row_format: bool, outputs: dict[str, np.ndarray]) -> dict:
    if not row_format:
        if len(outputs) == 1:
            ((name, arr),) = outputs.items()
            return {"outputs": array_to_json(arr, name)}
        return {"outputs": {k: array_to_json(v, k) for k, v in outputs.items()}}
    batch = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    first = next(iter(batch))
    for k, n in batch.items():
        if n is None or n != batch[first]:
            size = "is a scalar" if n is None else f"has {n} rows"
            raise RequestError(400, f"output '{k}' of signature '{sig.name}' {size} but '{first}' has "
                                    f"{batch[first]}; the \"instances\" (row) format needs every output batched "
                                    'along its first axis: send "inputs" (columnar format) instead')
    if len(outputs) == 1:
        ((name, arr),) = outputs.items()
        return {"predictions": array_to_json(arr, name)}
    cols = {k: array_to_json(v, k) for k, v in outputs.items()}
    return {"predictions": [{k: cols[k][i] for k in cols} for i in range(batch[first])]}


def _not_json(name: str):
    raise RequestError(400, f"malformed JSON in request body: {name} is not a JSON value (send finite numbers)")


def predict_json(servable: Servable, body: bytes) -> bytes:
    """A whole REST :predict call: request body → response body (raises :class:`RequestError`).

    Only JSON is accepted and written: ``NaN``/``Infinity`` in a request are a 400, and a
    response never holds them (a model output that is not finite is a 500 that says so).
    """
    try:
        doc = json.loads(body, parse_constant=_not_json)
        sig, row_format, arrays = _parse_predict(doc, servable)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"malformed JSON in request body: {e}") from None
    except RecursionError:
        raise RequestError(400, "request body is nested too deeply") from None
    outputs = servable.predict(sig.name, arrays)
    try:
        return json.dumps(_format_predict(sig, row_format, outputs), separators=(",", ":"),
                          allow_nan=False).encode("utf-8")
    except ValueError:
        raise RequestError(500, f"signature '{sig.name}' returned NaN or infinite values for this input") from None


def status_json(servables: list[Servable]) -> dict:
    return {"model_version_status": [
        {"version": str(s.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for s in servables]}


# --------------------------------------------------------------------------
# The REST application
# --------------------------------------------------------------------------


@dataclass
class _State:
    registry: ModelRegistry
    executor: ThreadPoolExecutor
    max_body_bytes: int
    max_inflight: int
    log: Callable[[str], None]
    inflight: int = 0
    large: asyncio.Semaphore | None = None  # one large body read and parsed at a time


#: Bodies above this many bytes are read and parsed one at a time (a JSON list of floats
#: takes ~10× its size while parsed), and memory is handed back to the system afterwards.
LARGE_BODY_BYTES = 4 * 2**20


def _trim_memory() -> None:
    """Returns freed heap to the system (glibc ``malloc_trim``), so a burst of large requests
    does not leave the server at its high-water mark."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


_STATE = web.AppKey("birdnet_serve_state", _State)


def _json_response(obj, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode("utf-8"), status=status, content_type="application/json")


def _error_response(status: int, message: str) -> web.Response:
    return _json_response({"error": message}, status)


@web.middleware
async def _errors_and_log(request: web.Request, handler):
    state = request.app[_STATE]
    t0 = time.perf_counter()
    try:
        response = await handler(request)
    except RequestError as e:
        response = _error_response(e.status, e.message)
    except web.HTTPRequestEntityTooLarge:
        response = _error_response(413, f"request body larger than this server's limit of "
                                        f"{state.max_body_bytes / 2**20:g} MB (--max-body-mb); send smaller batches")
    except web.HTTPException as e:
        response = _error_response(e.status, f"{e.reason}: {request.method} {request.path}")
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # noqa: BLE001 - a bug must not take the server down
        state.log("".join(traceback.format_exception(e)).rstrip())
        response = _error_response(500, f"internal server error: {type(e).__name__}: {_first_line(e)}")
    ms = 1000 * (time.perf_counter() - t0)
    state.log(f'{request.remote} "{request.method} {request.path_qs}" {response.status} {ms:.1f} ms')
    return response


async def _dispatch(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    path = request.path
    if request.method == "GET" and (m := _GET_PATH.fullmatch(path)):
        version = int(m["version"]) if m["version"] else None
        if m["metadata"]:
            return _json_response(state.registry.resolve(m["name"], version, m["label"]).metadata())
        return _json_response(status_json(state.registry.statuses(m["name"], version, m["label"])))
    if request.method == "POST" and (m := _POST_PATH.fullmatch(path)):
        servable = state.registry.resolve(m["name"], int(m["version"]) if m["version"] else None, m["label"])
        if m["verb"] != "predict":
            raise RequestError(400, f"':{m['verb']}' needs a {m['verb']} signature; this server only runs "
                                    "':predict' (use it with \"signature_name\")")
        return await _predict(request, state, servable)
    raise RequestError(404, f"Malformed request: {request.method} {path}")


async def _predict(request: web.Request, state: _State, servable: Servable) -> web.Response:
    if state.inflight >= state.max_inflight:
        raise RequestError(503, f"server busy: {state.inflight} requests in flight (limit {state.max_inflight}); "
                                "retry later")
    state.inflight += 1
    try:
        if request.content_length is not None and request.content_length > state.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=state.max_body_bytes, actual_size=request.content_length)
        loop = asyncio.get_running_loop()
        if request.content_length is None or request.content_length > LARGE_BODY_BYTES:
            if state.large is None:
                state.large = asyncio.Semaphore(1)
            async with state.large:
                try:
                    body = await request.read()
                    payload = await loop.run_in_executor(state.executor, predict_json, servable, body)
                finally:
                    body = None
                    await loop.run_in_executor(state.executor, _trim_memory)
        else:
            body = await request.read()
            payload = await loop.run_in_executor(state.executor, predict_json, servable, body)
        return web.Response(body=payload, content_type="application/json")
    finally:
        state.inflight -= 1


def default_workers() -> int:
    """Inference threads by default: the CPU count, at most 4 (TF parallelises inside each call)."""
    return max(1, min(4, os.cpu_count() or 1))


def make_app(models: str | os.PathLike | ModelRegistry, model_name: str | None = None,
             max_body_mb: float = DEFAULT_MAX_BODY_MB, workers: int | None = None,
             max_inflight: int | None = None, log: Callable[[str], None] = print) -> web.Application:
    """The aiohttp application serving the TF Serving v1 REST API.

    Args:
        models: ``MODEL_DIR`` (see the module docstring) or an already loaded registry.
        model_name: name of a single export or base path (default: the folder name).
        max_body_mb: largest request body accepted (413 above).
        workers: inference threads (default :func:`default_workers`).
        max_inflight: predict requests accepted at once, queued ones included (503 above;
            default ``max(16, 4 * workers)``).
        log: receives one line per request and the load messages.
    """
    registry = models if isinstance(models, ModelRegistry) else ModelRegistry.load(models, model_name, log=log)
    workers = workers or default_workers()
    if workers < 1 or max_body_mb <= 0:
        raise BirdnetError("--workers and --max-body-mb must be positive")
    max_body = int(max_body_mb * 2**20)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="birdnet-serve")
    app = web.Application(client_max_size=max_body, middlewares=[_errors_and_log])
    app[_STATE] = _State(registry, executor, max_body, max_inflight or max(16, 4 * workers), log)
    app.router.add_route("*", "/{tail:.*}", _dispatch)

    async def shutdown(_app):
        executor.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    return app


def registry_of(app: web.Application) -> ModelRegistry:
    """The models an application from :func:`make_app` serves."""
    return app[_STATE].registry


# --------------------------------------------------------------------------
# gRPC (tensorflow_serving.apis)
# --------------------------------------------------------------------------

_GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


def start_grpc_server(registry: ModelRegistry, host: str = "127.0.0.1", port: int = 0, workers: int | None = None,
                      max_message_mb: float = DEFAULT_MAX_BODY_MB, log: Callable[[str], None] = print):
    """Starts TF Serving's gRPC ``PredictionService`` (Predict, GetModelMetadata) and ``ModelService``.

    Returns:
        ``(server, port)``: the started ``grpc.Server`` (``server.stop(grace)`` ends it) and its port.
    """
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def servable_of(spec) -> Servable:
        version = spec.version.value if spec.HasField("version") else None
        return registry.resolve(spec.name, version, spec.version_label or None)

    def handled(method):
        def wrapper(self, request, context):
            t0 = time.perf_counter()
            code = "OK"
            try:
                return method(self, request, context)
            except RequestError as e:
                code = _GRPC_CODES.get(e.status, "INTERNAL")
                context.abort(getattr(grpc.StatusCode, code), e.message)
            except Exception as e:  # noqa: BLE001 - a bug must not take the server down
                code = "INTERNAL"
                log("".join(traceback.format_exception(e)).rstrip())
                context.abort(grpc.StatusCode.INTERNAL, f"internal server error: {type(e).__name__}: {_first_line(e)}")
            finally:
                ms = 1000 * (time.perf_counter() - t0)
                log(f'{context.peer()} "gRPC {method.__name__} {request.model_spec.name}" {code} {ms:.1f} ms')
        wrapper.__name__ = method.__name__
        return wrapper

    def fill_spec(spec, servable: Servable, signature_name: str = ""):
        spec.name = servable.name
        spec.version.value = servable.version
        spec.signature_name = signature_name

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        @handled
        def Predict(self, request, context):  # noqa: N802 - gRPC method name
            servable = servable_of(request.model_spec)
            sig = servable.signature(request.model_spec.signature_name or DEFAULT_SIGNATURE)
            arrays = {}
            for key, proto in request.inputs.items():
                spec = sig.inputs.get(key)
                if spec is not None and proto.dtype != spec.dtype:
                    from tensorflow.core.framework import types_pb2

                    raise RequestError(400, f"input '{key}' is {types_pb2.DataType.Name(proto.dtype)} but signature "
                                            f"'{sig.name}' expects {spec.dtype_name}")
                try:
                    arrays[key] = tf.make_ndarray(proto)
                except (TypeError, ValueError) as e:
                    raise RequestError(400, f"input '{key}': unreadable TensorProto ({_first_line(e)})") from None
            outputs = servable.predict(sig.name, arrays)
            wanted = list(request.output_filter) or list(outputs)
            unknown = [k for k in wanted if k not in outputs]
            if unknown:
                raise RequestError(400, f"output_filter names unknown output '{unknown[0]}'; signature "
                                        f"'{sig.name}' returns: {', '.join(outputs)}")
            response = predict_pb2.PredictResponse()
            fill_spec(response.model_spec, servable, sig.name)
            for key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
            return response

        @handled
        def GetModelMetadata(self, request, context):  # noqa: N802 - gRPC method name
            servable = servable_of(request.model_spec)
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise RequestError(400, f"metadata_field must be ['signature_def'] (the only one TF Serving has); "
                                        f"got {fields}")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            fill_spec(response.model_spec, servable)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig_def in servable.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(sig_def)
            response.metadata["signature_def"].Pack(sig_map)
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        @handled
        def GetModelStatus(self, request, context):  # noqa: N802 - gRPC method name
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for servable in registry.statuses(spec.name, version, spec.version_label or None):
                status = response.model_version_status.add()
                status.version = servable.version
                status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            return response

    max_bytes = int(max_message_mb * 2**20)
    server = grpc.server(ThreadPoolExecutor(max_workers=workers or default_workers(),
                                            thread_name_prefix="birdnet-grpc"),
                         options=[("grpc.max_receive_message_length", max_bytes),
                                  ("grpc.max_send_message_length", -1)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise BirdnetError(f"cannot listen for gRPC on {address}: {_first_line(e)}; choose another --grpc-port") from None
    if not bound:
        raise BirdnetError(f"cannot listen for gRPC on {address}; choose another --grpc-port")
    server.start()
    return server, bound


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


class ServerThread:
    """An application served on a background thread (tests, notebooks): ``.url``, ``.port``, ``.stop()``."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.host, self.port = host, port
        self._thread = threading.Thread(target=self._run, args=(app,), name="birdnet-serve-http", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self, app):
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main(app))
        self._loop.close()

    async def _main(self, app):
        runner = web.AppRunner(app, access_log=None)
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = runner.addresses[0][1]
            self._stop = asyncio.Event()
        except BaseException as e:  # noqa: BLE001 - handed to the constructor's caller
            self._error = e
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


def run_server(model_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8501, grpc_port: int | None = None,
               model_name: str | None = None, max_body_mb: float = DEFAULT_MAX_BODY_MB, workers: int | None = None,
               max_inflight: int | None = None, log: Callable[[str], None] = print) -> None:
    """Loads ``model_dir`` and serves it until SIGINT/SIGTERM (what ``birdnet-tf serve`` runs).

    Raises:
        BirdnetError: nothing servable in ``model_dir``, or a port already taken.
    """
    registry = ModelRegistry.load(model_dir, model_name, log=log)
    app = make_app(registry, max_body_mb=max_body_mb, workers=workers, max_inflight=max_inflight, log=log)
    grpc_server = None
    if grpc_port is not None:
        grpc_server, bound = start_grpc_server(registry, host, grpc_port, workers=workers,
                                               max_message_mb=max_body_mb, log=log)
        log(f"gRPC API (tensorflow.serving.PredictionService) on {host}:{bound}")

    async def main():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            await runner.cleanup()
            raise BirdnetError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        first = next(iter(registry.models))
        log(f"REST API (TF Serving v1) on http://{host}:{port}, e.g. "
            f"curl http://{host}:{port}/v1/models/{first}; Ctrl-C stops")
        try:
            await stop.wait()
        finally:
            log("stopping")
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        log("stopped")
    finally:
        if grpc_server is not None:
            grpc_server.stop(grace=2).wait()
