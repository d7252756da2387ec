"""``birdnet-tf serve`` and ``RemoteModel``: real servers on loopback, real SavedModels, real HTTP/gRPC.

The trained synthetic export is served from a TF Serving base path (``bird/1/``) and,
with a toy SavedModel of several signatures (multi-output, string, int and scalar
tensors, an assertion), from a ``models.config`` whose base paths point into a Docker
container (``/models/...``).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from birdnet_tf.errors import BirdnetError

from conftest import run_cli

TOY_LABELS = ["alpha", "beta", "gamma"]
TOY_RATE_HZ = 8000


def _http(url: str, body=None, method: str | None = None):
    """(status, decoded JSON answer) of one real HTTP request; bodies that are not bytes are sent as JSON."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method or ("GET" if data is None else "POST"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _write_toy_model(path) -> None:
    """A SavedModel with the signatures a generic server must handle."""
    import tensorflow as tf

    window = TOY_RATE_HZ // 2

    class Toy(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable([[2.0, -1.0, 0.5], [-3.0, 4.0, 1.0], [0.5, 0.5, -2.0]])

        def scores(self, x):
            feats = tf.stack([tf.reduce_mean(x, 1), tf.math.reduce_std(x, 1), tf.reduce_max(x, 1)], -1)
            return tf.nn.softmax(feats @ self.w)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
        def serve(self, waveform):
            return {"scores": self.scores(waveform)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")])
        def windows(self, waveform):
            frames = tf.signal.frame(waveform, window, window, pad_end=True)
            starts = tf.range(tf.shape(frames)[0]) * window
            return {"scores": self.scores(frames), "start_s": tf.cast(starts, tf.float32) / TOY_RATE_HZ,
                    "end_s": tf.cast(starts + window, tf.float32) / TOY_RATE_HZ,
                    "labels": tf.constant(TOY_LABELS), "sample_rate_hz": tf.constant(TOY_RATE_HZ, tf.int32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                      tf.TensorSpec([None], tf.int32, name="n")])
        def mixed(self, text, n):
            return {"upper": tf.strings.upper(text), "twice": 2 * n}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def checked(self, x):
            tf.debugging.assert_non_negative(x, message="x must not be negative")
            return {"y": tf.sqrt(x)}

    toy = Toy()
    tf.saved_model.save(toy, str(path), signatures={"serving_default": toy.serve, "windows": toy.windows,
                                                    "mixed": toy.mixed, "checked": toy.checked})


def _toy_local(path):
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda x: fn(waveform=tf.constant(x))["scores"].numpy()


@pytest.fixture(scope="module")
def local(trained_synthetic):
    from birdnet_tf.export import ExportedModel

    return ExportedModel(trained_synthetic.export)


@pytest.fixture(scope="module")
def waves(local):
    """Three different 0.6-s test waveforms at the model's rate: silence, noise, a tone."""
    n = int(0.6 * local.sample_rate_hz)
    t = np.arange(n) / local.sample_rate_hz
    rng = np.random.default_rng(1)
    return np.stack([np.zeros(n), 0.2 * rng.standard_normal(n), 0.4 * np.sin(2 * np.pi * 2500 * t)]).astype(np.float32)


@pytest.fixture(scope="module")
def base_path_server(trained_synthetic, tmp_path_factory):
    """The export copied to ``bird/1/`` (a TF Serving base path), served with a 2-MB body limit."""
    from birdnet_tf.serve import ServerThread, make_app

    base = tmp_path_factory.mktemp("base") / "bird"
    shutil.copytree(trained_synthetic.export, base / "1")
    lines: list[str] = []
    app = make_app(base, max_body_mb=2, workers=2, log=lines.append)
    server = ServerThread(app)
    server.app, server.lines = app, lines
    yield server
    server.stop()


@pytest.fixture(scope="module")
def config_server(trained_synthetic, tmp_path_factory):
    """A models.config with container paths: bird (versions 1 and 2, policy all, label 'stable') and the toy."""
    from birdnet_tf.serve import ServerThread, make_app

    root = tmp_path_factory.mktemp("compose")
    models = root / "models"
    for version in (1, 2):
        shutil.copytree(trained_synthetic.export, models / "bird" / str(version))
    _write_toy_model(models / "toy" / "7")
    (models / "models.config").write_text("""
model_config_list {
  config { name: "bird" base_path: "/models/bird" model_platform: "tensorflow"
           model_version_policy { all {} } version_labels { key: "stable" value: 1 } }
  config { name: "toy" base_path: "/models/toy" model_platform: "tensorflow" }
}
""")
    app = make_app(models / "models.config", workers=2, log=lambda line: None)
    server = ServerThread(app)
    server.app, server.models = app, models
    yield server
    server.stop()


def test_status_and_metadata_as_tf_serving(base_path_server):
    url = base_path_server.url
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert _http(f"{url}/v1/models/bird") == (200, expected)
    assert _http(f"{url}/v1/models/bird/versions/1") == (200, expected)
    status, meta = _http(f"{url}/v1/models/bird/metadata")
    assert status == 200
    assert meta["model_spec"] == {"name": "bird", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    waveform = sig["inputs"]["waveform"]
    assert waveform["dtype"] == "DT_FLOAT"
    assert waveform["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "-1", "name": ""}]
    assert sig["outputs"]["scores"]["dtype"] == "DT_FLOAT"
    assert _http(f"{url}/v1/models/bird/versions/1/metadata")[1]["model_spec"]["version"] == "1"


def test_predict_row_and_columnar_equal_local_model(base_path_server, local, waves):
    url = base_path_server.url
    want = local(waves)
    assert want.shape == (3, len(local.labels))
    for path, body, key in [
        ("/v1/models/bird:predict", {"instances": waves.tolist()}, "predictions"),
        ("/v1/models/bird/versions/1:predict", {"signature_name": "serving_default", "instances": waves.tolist()},
         "predictions"),
        ("/v1/models/bird:predict", {"instances": [{"waveform": w} for w in waves.tolist()]}, "predictions"),
        ("/v1/models/bird:predict", {"inputs": waves.tolist()}, "outputs"),
        ("/v1/models/bird:predict", {"inputs": {"waveform": waves.tolist()}}, "outputs"),
    ]:
        status, answer = _http(url + path, body)
        assert status == 200, answer
        assert list(answer) == [key]
        np.testing.assert_allclose(np.asarray(answer[key], np.float32), want, atol=1e-5, err_msg=f"{path} {key}")
    assert any('"POST /v1/models/bird:predict" 200' in line and line.endswith(" ms")
               for line in base_path_server.lines)


def test_eight_concurrent_requests_all_correct(base_path_server, local, waves):
    rng = np.random.default_rng(7)
    batches = [(waves * rng.uniform(0.2, 2.0, (3, 1))).astype(np.float32) for _ in range(8)]
    url = f"{base_path_server.url}/v1/models/bird:predict"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: _http(url, {"instances": b.tolist()}), batches))
    for batch, (status, answer) in zip(batches, answers):
        assert status == 200, answer
        np.testing.assert_allclose(np.asarray(answer["predictions"], np.float32), local(batch), atol=1e-5)


BAD_REQUESTS = [
    # (path, body, status, words the error must contain)
    ("/v1/models/bird:predict", b"{not json", 400, "malformed JSON"),
    ("/v1/models/bird:predict", [[0.0, 0.1]], 400, '"instances" or "inputs"'),
    ("/v1/models/bird:predict", {"instances": [0.1, 0.2, 0.3]}, 400, "expects [-1, -1]"),
    ("/v1/models/bird:predict", {"inputs": [[[0.1, 0.2]]]}, 400, "has shape [1, 1, 2]"),
    ("/v1/models/bird:predict", {"instances": [["0.1", "0.2"]]}, 400, "got strings"),
    ("/v1/models/bird:predict", {"instances": [[0.1, None]]}, 400, "got null"),
    ("/v1/models/bird:predict", {"instances": [[0.1, 0.2], [0.1]]}, 400, "ragged: [1] has 1 item"),
    ("/v1/models/bird:predict", {"instances": []}, 400, "empty"),
    ("/v1/models/bird:predict", {"inputs": {}}, 400, "input 'waveform' missing"),
    ("/v1/models/bird:predict", {"inputs": {"audio": [[0.1]]}}, 400, "unknown input 'audio'"),
    ("/v1/models/bird:predict", {"instances": [{"audio": [0.1]}]}, 400, "unknown input 'audio'"),
    ("/v1/models/bird:predict", {"instances": [[0.1]], "inputs": [[0.1]]}, 400, "not both"),
    ("/v1/models/bird:predict", {"signature_name": "nope", "instances": [[0.1]]}, 400, '"nope" not found'),
    ("/v1/models/bird:classify", {"instances": [[0.1]]}, 400, ":predict"),
    ("/v1/models/nope:predict", {"instances": [[0.1]]}, 404, "Servable not found"),
    ("/v1/models/bird/versions/9:predict", {"instances": [[0.1]]}, 404, "Specific(bird, 9)"),
    ("/v1/models/nope", None, 404, "model nope"),
    ("/v1/models/bird/versions/9/metadata", None, 404, "Specific(bird, 9)"),
    ("/v1/nothing/here", None, 404, "Malformed request"),
    ("/v1/models/bird:predict", b'{"instances": [[' + b"0.25," * 600_000 + b"0.0]]}", 413, "limit of 2 MB"),
]


@pytest.mark.parametrize("path, body, status, words", BAD_REQUESTS, ids=[c[3] for c in BAD_REQUESTS])
def test_bad_request_answered_and_server_stays_up(base_path_server, local, waves, path, body, status, words):
    got, answer = _http(base_path_server.url + path, body)
    assert (got, list(answer)) == (status, ["error"]), answer
    assert words in answer["error"]
    got, answer = _http(f"{base_path_server.url}/v1/models/bird:predict", {"instances": waves[1:].tolist()})
    assert got == 200
    np.testing.assert_allclose(np.asarray(answer["predictions"], np.float32), local(waves[1:]), atol=1e-5)


def test_models_config_with_container_paths_versions_and_labels(config_server, local, waves):
    url = config_server.url
    status, answer = _http(f"{url}/v1/models/bird")
    assert status == 200 and [s["version"] for s in answer["model_version_status"]] == ["2", "1"]
    assert _http(f"{url}/v1/models/toy")[1]["model_version_status"][0]["version"] == "7"
    for path in ("bird", "bird/versions/1", "bird/versions/2", "bird/labels/stable"):
        status, answer = _http(f"{url}/v1/models/{path}:predict", {"instances": waves.tolist()})
        assert status == 200, (path, answer)
        np.testing.assert_allclose(np.asarray(answer["predictions"], np.float32), local(waves), atol=1e-5)
    assert _http(f"{url}/v1/models/bird/labels/stable/metadata")[1]["model_spec"]["version"] == "1"
    assert _http(f"{url}/v1/models/bird/labels/beta:predict", {"instances": [[0.0]]})[0] == 404


def test_any_signature_served_generically(config_server):
    url = f"{config_server.url}/v1/models/toy"
    meta = _http(f"{url}/metadata")[1]["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "windows", "mixed", "checked"} <= set(meta)
    assert meta["windows"]["outputs"]["labels"]["dtype"] == "DT_STRING"
    assert meta["windows"]["outputs"]["sample_rate_hz"]["tensor_shape"]["dim"] == []

    # several outputs of different batch sizes: columnar works, the row format is refused clearly
    recording = np.linspace(-0.5, 0.5, TOY_RATE_HZ + 100, dtype=np.float32).tolist()
    status, answer = _http(f"{url}:predict", {"signature_name": "windows", "inputs": recording})
    assert status == 200, answer
    out = answer["outputs"]
    assert out["labels"] == TOY_LABELS and out["sample_rate_hz"] == TOY_RATE_HZ
    assert np.asarray(out["scores"]).shape == (3, 3) and out["start_s"] == [0.0, 0.5, 1.0]
    status, answer = _http(f"{url}:predict", {"signature_name": "windows", "instances": recording})
    assert status == 400 and '"inputs" (columnar format)' in answer["error"]

    # two inputs (string and int32): rows are objects both ways
    rows = [{"text": "ab", "n": 2}, {"text": {"b64": "Yw=="}, "n": -5}]
    status, answer = _http(f"{url}:predict", {"signature_name": "mixed", "instances": rows})
    assert (status, answer) == (200, {"predictions": [{"upper": "AB", "twice": 4}, {"upper": "C", "twice": -10}]})
    status, answer = _http(f"{url}:predict", {"signature_name": "mixed", "inputs": {"text": ["x"], "n": [1]}})
    assert (status, answer) == (200, {"outputs": {"upper": ["X"], "twice": [2]}})
    for inputs, words in [({"text": ["x"], "n": [1.5]}, "must hold integers (DT_INT32)"),
                          ({"text": [3], "n": [1]}, "must hold strings"),
                          ({"text": ["x"]}, "input 'n' missing"),
                          (["x"], "takes 2 inputs")]:
        status, answer = _http(f"{url}:predict", {"signature_name": "mixed", "inputs": inputs})
        assert status == 400 and words in answer["error"], (inputs, answer)
    status, answer = _http(f"{url}:predict", {"signature_name": "mixed", "instances": [{"text": "x"}]})
    assert status == 400 and "lacks input 'n'" in answer["error"]

    # an error raised by TensorFlow while running the graph: 400 with its first line
    assert _http(f"{url}:predict", {"signature_name": "checked", "inputs": [4.0, 9.0]}) == (200, {"outputs": [2.0, 3.0]})
    status, answer = _http(f"{url}:predict", {"signature_name": "checked", "inputs": [4.0, -1.0]})
    assert status == 400 and "x must not be negative" in answer["error"] and "\n" not in answer["error"]


def test_remote_model_rest_equals_local(base_path_server, local, waves, trained_synthetic):
    from birdnet_tf.infer.remote import RemoteModel
    from birdnet_tf.serve import registry_of

    labels_txt = trained_synthetic.export / "assets.extra" / "labels.txt"
    servable = registry_of(base_path_server.app).resolve("bird")
    if "windows" in servable.signatures:  # labels and rate read from the export's 'windows' signature
        remote = RemoteModel(base_path_server.url, "bird")
    else:
        with pytest.raises(BirdnetError, match="pass --labels LABELS_TXT and --sample-rate HZ"):
            RemoteModel(base_path_server.url, "bird")
        remote = RemoteModel(base_path_server.url, "bird", labels=labels_txt, sample_rate_hz=local.sample_rate_hz)
    assert remote.labels == local.labels and remote.sample_rate_hz == local.sample_rate_hz
    np.testing.assert_allclose(remote(waves), local(waves), atol=1e-5)

    # a batch larger than the request limit goes in several requests, same scores
    batch = np.concatenate([waves] * 3)
    small = RemoteModel(f"127.0.0.1:{base_path_server.port}", "bird", labels=labels_txt,
                        sample_rate_hz=local.sample_rate_hz, max_request_mb=0.6)
    before = sum('"POST /v1/models/bird:predict" 200' in line for line in base_path_server.lines)
    np.testing.assert_allclose(small(batch), local(batch), atol=1e-5)
    after = sum('"POST /v1/models/bird:predict" 200' in line for line in base_path_server.lines)
    assert after - before == len(batch)  # 0.6 MB holds one 0.6-s waveform as JSON, not two
    assert small(np.zeros((0, 100), np.float32)).shape == (0, len(local.labels))


def test_remote_model_reads_labels_from_windows_signature(config_server):
    from birdnet_tf.infer.remote import RemoteModel

    toy = RemoteModel(config_server.url, "toy")
    assert toy.labels == TOY_LABELS and toy.sample_rate_hz == TOY_RATE_HZ
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (4, 3000)).astype(np.float32)
    np.testing.assert_allclose(toy(x), _toy_local(config_server.models / "toy" / "7")(x), atol=1e-6)


def test_remote_model_errors_are_clear(base_path_server, local):
    from birdnet_tf.infer.remote import RemoteModel

    labels = list(local.labels)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(BirdnetError, match="connection refused; is the server running"):
        RemoteModel(f"http://127.0.0.1:{free}", "bird", labels=labels, sample_rate_hz=local.sample_rate_hz)(np.zeros((1, 10)))
    with pytest.raises(BirdnetError, match=r"HTTP 404 .*Servable not found for request: Latest\(nope\)"):
        RemoteModel(base_path_server.url, "nope", labels=labels, sample_rate_hz=local.sample_rate_hz)(np.zeros((1, 10)))
    with pytest.raises(BirdnetError, match="returned scores of shape"):
        RemoteModel(base_path_server.url, "bird", labels=["only"], sample_rate_hz=local.sample_rate_hz)(np.zeros((1, 10)))
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        with pytest.raises(BirdnetError, match="no answer within 0.5 s"):
            RemoteModel(f"http://127.0.0.1:{silent.getsockname()[1]}", "bird", labels=labels, sample_rate_hz=local.sample_rate_hz,
                        timeout_s=0.5)(np.zeros((1, 10)))


def test_grpc_api_and_remote_model(config_server, local, waves):
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from birdnet_tf.infer.remote import RemoteModel
    from birdnet_tf.serve import registry_of, start_grpc_server

    server, port = start_grpc_server(registry_of(config_server.app), port=0, workers=2, log=lambda line: None)
    try:
        bird = RemoteModel(f"grpc://127.0.0.1:{port}", "bird", labels=list(local.labels),
                           sample_rate_hz=local.sample_rate_hz)
        np.testing.assert_allclose(bird(waves), local(waves), atol=1e-5)
        toy = RemoteModel(f"127.0.0.1:{port}", "toy", protocol="grpc")
        assert toy.labels == TOY_LABELS and toy.sample_rate_hz == TOY_RATE_HZ
        with pytest.raises(BirdnetError, match="NOT_FOUND: Servable not found"):
            RemoteModel(f"grpc://127.0.0.1:{port}", "nope", labels=["a"], sample_rate_hz=1)(waves)

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "toy"
            answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
            assert [(s.version, s.state) for s in answer.model_version_status] == [
                (7, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
        bird.close()
        toy.close()
    finally:
        server.stop(0)


def test_serve_cli_errors(trained_synthetic, tmp_path):
    rc, _, err = run_cli(["serve", str(tmp_path / "missing")])
    assert rc == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(["serve", str(tmp_path / "empty")])
    assert rc == 2 and "neither an export folder" in err
    (tmp_path / "models.config").write_text('model_config_list { config { name: "x" base_path: "/models/x" } }')
    rc, _, err = run_cli(["serve", str(tmp_path / "models.config")])
    assert rc == 2 and "base_path '/models/x' of model 'x' not found" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        rc, out, err = run_cli(["serve", str(trained_synthetic.export), "--port", str(busy.getsockname()[1])])
    assert rc == 2 and "cannot listen on 127.0.0.1" in err and "loaded model 'export'" in out


def test_busy_server_answers_503_and_recovers(base_path_server, local, waves):
    """With one request in flight allowed, a second one is refused with 503 while the first uploads."""
    import http.client
    import time

    from birdnet_tf.serve import ServerThread, make_app, registry_of

    server = ServerThread(make_app(registry_of(base_path_server.app), max_inflight=1, log=lambda line: None))
    try:
        body = json.dumps({"instances": waves[:1].tolist()}).encode()
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        slow.sendall(b"POST /v1/models/bird:predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])  # the rest of the body comes later
        answers = []
        for _ in range(200):  # until the server has started on the slow request
            answers.append(_http(f"{server.url}/v1/models/bird:predict", {"instances": waves[:1].tolist()}))
            if answers[-1][0] == 503:
                break
            time.sleep(0.05)
        assert answers[-1][0] == 503 and "server busy" in answers[-1][1]["error"]
        slow.sendall(body[10:])
        response = http.client.HTTPResponse(slow)
        response.begin()
        assert response.status == 200
        np.testing.assert_allclose(np.asarray(json.loads(response.read())["predictions"], np.float32),
                                   local(waves[:1]), atol=1e-5)
        slow.close()
        assert _http(f"{server.url}/v1/models/bird:predict", {"instances": waves[:1].tolist()})[0] == 200
    finally:
        server.stop()


def _config(path, text: str):
    path.write_text(f"model_config_list {{ {text} }}")
    return path


def test_find_models_layouts_and_policies(tmp_path):
    from birdnet_tf.serve import find_models

    base = tmp_path / "models" / "bird"
    for version in ("1", "2", "10"):
        (base / version).mkdir(parents=True)
        (base / version / "saved_model.pb").write_bytes(b"")
    (base / "11").mkdir()  # no saved_model.pb yet (an export in progress)
    (base / "notes").mkdir()
    warnings: list[str] = []
    [src] = find_models(base, log=warnings.append)
    assert (src.name, list(src.versions)) == ("bird", [10])  # the highest by number, not by name
    assert any("11: numbered folder without saved_model.pb" in w for w in warnings)
    assert [(s.name, list(s.versions)) for s in find_models(base / "2")] == [("bird", [2])]
    assert [(s.name, list(s.versions)) for s in find_models(base / "2", model_name="b")] == [("b", [2])]

    cfg = tmp_path / "models" / "models.config"
    [src] = find_models(_config(cfg, 'config { name: "x" base_path: "bird" '
                                     "model_version_policy { latest { num_versions: 2 } } }"))
    assert (src.name, list(src.versions)) == ("x", [2, 10])  # relative base path: beside the config
    [src] = find_models(_config(cfg, 'config { name: "x" base_path: "/models/bird" '
                                     "model_version_policy { specific { versions: 1 versions: 2 } } "
                                     'version_labels { key: "canary" value: 2 } }'))
    assert (list(src.versions), src.labels) == ([1, 2], {"canary": 2})
    for text, words in [
        ('config { name: "x" base_path: "bird" model_version_policy { specific { versions: 5 } } }',
         "asks for version(s) [5]"),
        ('config { name: "x" base_path: "bird" version_labels { key: "old" value: 1 } }', "which is not served"),
        ('config { name: "x" base_path: "bird" } config { name: "x" base_path: "bird" }', "appears twice"),
        ('config { name: "x" base_path: "bird" model_platform: "onnx" }', "model_platform 'onnx'"),
        ('config { name: "x" base_path: "/nowhere/y" }', "base_path '/nowhere/y' of model 'x' not found"),
        ("config { name: ", "not a valid TF Serving model config"),
    ]:
        with pytest.raises(BirdnetError, match=re.escape(words)):
            find_models(_config(cfg, text))
    with pytest.raises(BirdnetError, match="--model-name does not apply"):
        find_models(cfg, model_name="y")


def test_predict_cli_through_the_server_equals_local_sliding_windows(base_path_server, trained_synthetic, tmp_path):
    """`birdnet-tf predict --server URL` (REST) gives the rows a local `--engine sliding` run gives."""
    import pandas as pd

    from conftest import run_cli

    audio = trained_synthetic.data / "chirp2to4k"
    remote_csv, local_csv = tmp_path / "remote.csv", tmp_path / "local.csv"
    rc, out, err = run_cli(["predict", "--server", base_path_server.url, "--model-name", "bird", str(audio),
                            "--window-s", "1", "--out", str(remote_csv), "--no-progress"])
    assert rc == 0, err
    rc, _, err = run_cli(["predict", str(trained_synthetic.export), str(audio), "--engine", "sliding",
                          "--window-s", "1", "--out", str(local_csv), "--no-progress"])
    assert rc == 0, err
    remote, local = pd.read_csv(remote_csv), pd.read_csv(local_csv)
    assert list(remote.columns) == list(local.columns) and len(remote) == len(local) > 4
    assert list(remote["file"]) == list(local["file"])
    np.testing.assert_allclose(remote.iloc[:, 1:].to_numpy(float), local.iloc[:, 1:].to_numpy(float), atol=1e-5)
