"""A model behind a TF Serving compatible server, used like a local export.

``RemoteModel`` talks to TensorFlow Serving (its Docker image) or ``birdnet-tf serve``
over the v1 REST API (``urllib``, no extra dependency) or gRPC
(``tensorflow_serving.apis``), and has the interface of
:class:`birdnet_tf.export.ExportedModel` that :mod:`birdnet_tf.infer.predict` uses::

    model = RemoteModel("http://localhost:8501", "bird")
    scores = model(waveforms)        # float32 [batch, samples] -> [batch, classes]
    model.labels, model.sample_rate_hz

Labels and sample rate come from the arguments, else from the export's ``windows``
signature (called once on one second of silence: its ``labels`` and
``sample_rate_hz`` outputs). Large batches are split so that no request exceeds
``max_request_mb``.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from birdnet_tf.errors import BirdnetError
from birdnet_tf.infer.sliding import SlidingScorer

DEFAULT_SIGNATURE = "serving_default"
WINDOWS_SIGNATURE = "windows"

#: JSON bytes one float32 sample may take in a request (``-1.2345678901234567e-05, ``)
_JSON_BYTES_PER_SAMPLE = 25
#: retries of a request the server refused as busy (HTTP 503), with doubling pauses from 0.5 s
_BUSY_RETRIES = 3


class RemoteError(BirdnetError):
    """The server answered, with an error (its message is quoted in ``detail``)."""

    def __init__(self, where: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.detail = detail


def _read_labels(labels: Sequence[str] | str | os.PathLike) -> list[str]:
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise BirdnetError(f"{path}: labels file not found (expected one class name per line, in score order)")
        out = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        if not out:
            raise BirdnetError(f"{path}: labels file is empty")
        return out
    return [str(s) for s in labels]


class RemoteModel:
    """Scores from a model served by TF Serving or ``birdnet-tf serve``.

    Args:
        url: server address: ``http://host:8501`` (REST; ``host:8501`` works too) or
            ``grpc://host:8500`` / ``host:8500`` with ``protocol="grpc"``.
        model_name: the served model's name (``/v1/models/<name>``).
        protocol: ``"rest"`` or ``"grpc"``; default: ``grpc`` for ``grpc://`` URLs, else ``rest``.
        signature: signature that maps ``waveform [batch, samples]`` to ``scores [batch, classes]``.
        labels: class names in score order, or the path of a ``labels.txt``; default: asked
            from the model's ``windows`` signature.
        sample_rate_hz: the rate the model expects; default: asked like ``labels``.
        timeout_s: seconds to wait for one request.
        version: a specific model version (default: the latest the server has).
        max_request_mb: larger batches are split into requests of at most this size.

    Raises:
        BirdnetError: the server cannot be reached, or labels and sample rate were not
            given and the model has no usable ``windows`` signature.
    """

    def __init__(self, url: str, model_name: str, protocol: str | None = None, signature: str = DEFAULT_SIGNATURE,
                 labels: Sequence[str] | str | os.PathLike | None = None, sample_rate_hz: int | None = None,
                 timeout_s: float = 60.0, version: int | None = None, max_request_mb: float = 16.0):
        url = url.strip().rstrip("/")
        if protocol is None:
            protocol = "grpc" if url.startswith("grpc://") else "rest"
        if protocol not in ("rest", "grpc"):
            raise BirdnetError(f"protocol '{protocol}': must be 'rest' or 'grpc'")
        if not model_name or "/" in model_name or ":" in model_name:
            raise BirdnetError(f"model name '{model_name}': must be non-empty without '/' or ':'")
        if timeout_s <= 0 or max_request_mb <= 0:
            raise BirdnetError("timeout and request size limit must be positive")
        self.protocol, self.model_name, self.signature = protocol, model_name, signature
        self.version, self.timeout_s = version, float(timeout_s)
        self.max_request_bytes = int(max_request_mb * 2**20)
        if protocol == "rest":
            if "://" not in url:
                url = "http://" + url
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise BirdnetError(f"{url}: a REST server URL starts with http:// or https://")
            self.url = url
            target = f"/v1/models/{urllib.parse.quote(model_name)}" + (f"/versions/{int(version)}" if version else "")
            self._predict_url = f"{url}{target}:predict"
        else:
            self.url = url.split("://", 1)[1] if "://" in url else url
            self._channel = self._stub_cache = None
            self._io_names: dict[str, tuple[list[str], list[str]]] = {}
        #: the remote model's config is not reachable over the serving API
        self.config = None
        self._labels = _read_labels(labels) if labels is not None else None
        self._sample_rate_hz = int(sample_rate_hz) if sample_rate_hz is not None else None
        if self._sample_rate_hz is not None and self._sample_rate_hz <= 0:
            raise BirdnetError(f"sample rate {sample_rate_hz}: must be positive")
        if self._labels is None or self._sample_rate_hz is None:
            self._discover()

    def __repr__(self) -> str:
        return f"RemoteModel({self.url!r}, {self.model_name!r}, protocol={self.protocol!r})"

    @property
    def labels(self) -> list[str]:
        """Class names in score order."""
        return self._labels

    @property
    def sample_rate_hz(self) -> int:
        """The waveform rate the model expects, in Hz."""
        return self._sample_rate_hz

    @property
    def _where(self) -> str:
        return f"{self.url} (model '{self.model_name}', {self.protocol})"

    # ------------------------------------------------------------------ scoring

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        """``float32 [batch, samples]`` at :attr:`sample_rate_hz` → ``float32 [batch, classes]`` scores."""
        x = np.asarray(waveforms, np.float32)
        if x.ndim != 2:
            raise BirdnetError(f"waveforms must be float32 [batch, samples]; got shape {list(x.shape)}")
        if x.shape[0] == 0:
            return np.zeros((0, len(self._labels)), np.float32)
        per_sample = _JSON_BYTES_PER_SAMPLE if self.protocol == "rest" else 4
        rows = max(1, self.max_request_bytes // (per_sample * max(1, x.shape[1]) + 64))
        parts = [self._score_batch(x[i:i + rows]) for i in range(0, len(x), rows)]
        scores = np.concatenate(parts, axis=0)
        if scores.shape != (len(x), len(self._labels)):
            raise BirdnetError(f"{self._where}: returned scores of shape {list(scores.shape)} for {len(x)} "
                               f"waveforms and {len(self._labels)} labels (wrong --labels, or not a "
                               "waveform-to-scores model?)")
        return scores

    def _score_batch(self, x: np.ndarray) -> np.ndarray:
        if self.protocol == "rest":
            doc = self._post({"signature_name": self.signature, "instances": x.tolist()})
            predictions = doc.get("predictions")
            if not isinstance(predictions, list):
                raise RemoteError(self._where, "answer lacks \"predictions\"")
            if predictions and isinstance(predictions[0], dict):  # several outputs: rows are objects
                key = "scores" if "scores" in predictions[0] else None
                if key is None:
                    raise RemoteError(self._where, f"signature '{self.signature}' returns "
                                      f"{sorted(predictions[0])}, not 'scores'")
                predictions = [row[key] for row in predictions]
            try:
                return np.asarray(predictions, np.float32)
            except (TypeError, ValueError):
                raise RemoteError(self._where, "\"predictions\" are not a numeric [batch, classes] array") from None
        inputs, outputs = self._grpc_io(self.signature)
        if len(inputs) != 1:
            raise RemoteError(self._where, f"signature '{self.signature}' takes {inputs}, not one waveform input")
        key = "scores" if "scores" in outputs else outputs[0] if len(outputs) == 1 else None
        if key is None:
            raise RemoteError(self._where, f"signature '{self.signature}' returns {outputs}, not 'scores'")
        return np.asarray(self._grpc_predict(self.signature, {inputs[0]: x}, [key])[key], np.float32)

    # ----------------------------------------------------- labels, sample rate

    def _discover(self) -> None:
        """Reads labels and sample rate from the ``windows`` signature (one second of zeros)."""
        zeros = np.zeros(self._sample_rate_hz or 48000, np.float32)
        try:
            if self.protocol == "rest":
                doc = self._post({"signature_name": WINDOWS_SIGNATURE, "inputs": zeros.tolist()})
                out = doc.get("outputs")
                if not isinstance(out, dict) or "labels" not in out or "sample_rate_hz" not in out:
                    names = sorted(out) if isinstance(out, dict) else "one tensor"
                    raise RemoteError(self._where, f"its outputs are {names}, without 'labels' and 'sample_rate_hz'")
                labels, rate = out["labels"], out["sample_rate_hz"]
            else:
                inputs, outputs = self._grpc_io(WINDOWS_SIGNATURE)
                if len(inputs) != 1 or not {"labels", "sample_rate_hz"} <= set(outputs):
                    raise RemoteError(self._where, f"it takes {inputs} and returns {outputs}")
                out = self._grpc_predict(WINDOWS_SIGNATURE, {inputs[0]: zeros}, ["labels", "sample_rate_hz"])
                labels = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in out["labels"].tolist()]
                rate = out["sample_rate_hz"].item()
            if not isinstance(labels, list) or not labels or not all(isinstance(s, str) for s in labels):
                raise RemoteError(self._where, "its 'labels' output is not a list of names")
            rate = int(rate)
        except RemoteError as e:
            raise BirdnetError(f"{self._where}: cannot read labels and sample rate from the model's "
                               f"'{WINDOWS_SIGNATURE}' signature ({e.detail}); pass --labels LABELS_TXT and "
                               "--sample-rate HZ") from None
        except (TypeError, ValueError):
            raise BirdnetError(f"{self._where}: the '{WINDOWS_SIGNATURE}' signature's 'sample_rate_hz' is not a "
                               "number; pass --labels LABELS_TXT and --sample-rate HZ") from None
        if self._labels is None:
            self._labels = labels
        if self._sample_rate_hz is None:
            self._sample_rate_hz = rate

    # -------------------------------------------------------------------- REST

    def _post(self, payload: dict) -> dict:
        body = json.dumps(payload).encode("utf-8")
        for attempt in range(_BUSY_RETRIES + 1):
            request = urllib.request.Request(self._predict_url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = response.read()
                break
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code == 503 and attempt < _BUSY_RETRIES:
                    time.sleep(0.5 * 2**attempt)
                    continue
                hint = " (the model name or version is not served there)" if e.code == 404 else ""
                raise RemoteError(self._where, f"server answered HTTP {e.code}{hint}: {message}") from None
            except urllib.error.URLError as e:
                raise self._connection_error(e.reason) from None
            except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                raise self._connection_error(e) from None
        try:
            doc = json.loads(answer)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RemoteError(self._where, f"answer is not JSON: {answer[:200]!r}") from None
        if not isinstance(doc, dict):
            raise RemoteError(self._where, "answer is not a JSON object")
        return doc

    def _connection_error(self, reason) -> BirdnetError:
        if isinstance(reason, TimeoutError):
            return BirdnetError(f"{self._where}: no answer within {self.timeout_s:g} s (server overloaded, or "
                                "raise the timeout)")
        if isinstance(reason, ConnectionRefusedError):
            return BirdnetError(f"{self._where}: connection refused; is the server running? (start one with "
                                "'birdnet-tf serve MODEL_DIR' or 'docker compose -f docker/docker-compose.yml up')")
        return BirdnetError(f"{self._where}: cannot reach the server: {reason}")

    # -------------------------------------------------------------------- gRPC

    def _stub(self):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        if self._stub_cache is None:
            self._channel = grpc.insecure_channel(self.url, options=[
                ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
            self._stub_cache = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        return self._stub_cache

    def _spec(self, spec, signature: str = "") -> None:
        spec.name = self.model_name
        spec.signature_name = signature
        if self.version:
            spec.version.value = int(self.version)

    def _rpc(self, method: str, request):
        import grpc

        try:
            return getattr(self._stub(), method)(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise self._connection_error(TimeoutError()) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise BirdnetError(f"{self._where}: server unavailable ({details}); is it running? (start one "
                                   "with 'birdnet-tf serve MODEL_DIR --grpc-port 8500' or docker compose)") from None
            raise RemoteError(self._where, f"server answered {code.name}: {details}") from None

    def _grpc_io(self, signature: str) -> tuple[list[str], list[str]]:
        """Input and output names of ``signature``, from GetModelMetadata."""
        if signature not in self._io_names:
            from tensorflow_serving.apis import get_model_metadata_pb2

            request = get_model_metadata_pb2.GetModelMetadataRequest()
            self._spec(request.model_spec)
            request.metadata_field.append("signature_def")
            response = self._rpc("GetModelMetadata", request)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(sig_map)
            for name, sig_def in sig_map.signature_def.items():
                self._io_names[name] = (sorted(sig_def.inputs), sorted(sig_def.outputs))
            if signature not in self._io_names:
                have = ", ".join(sorted(sig_map.signature_def))
                raise RemoteError(self._where, f"no signature '{signature}' (it has {have})")
        return self._io_names[signature]

    def _grpc_predict(self, signature: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(outputs)
        response = self._rpc("Predict", request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def close(self) -> None:
        """Closes the gRPC channel (REST keeps no connection open)."""
        if self.protocol == "grpc" and self._channel is not None:
            self._channel.close()
            self._channel = self._stub_cache = None


def _error_message(e: urllib.error.HTTPError) -> str:
    """The ``error`` field of a TF Serving error answer, else the start of its body."""
    try:
        raw = e.read()
    except OSError:
        raw = b""
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    return raw[:300].decode("utf-8", "replace").strip() or e.reason



class RemoteScorer(SlidingScorer):
    """A served model as a :class:`~birdnet_tf.infer.engine.Scorer`: sliding windows through
    :class:`RemoteModel` (``url``, ``model_name`` and ``kwargs`` as there), ``batch_size`` windows per request."""

    def __init__(self, url: str, model_name: str, batch_size: int = 32, **kwargs):
        super().__init__(RemoteModel(url, model_name, **kwargs), batch_size)
