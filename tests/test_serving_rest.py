"""TF Serving's REST rules on both exports: binary outputs named *_bytes, the stand-in (tfcxr.export.rest)
and tools/serving_client.py over HTTP on 127.0.0.1."""

import base64
import http.client
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr.constants import LABELS
from tfcxr.export import rest, saved_model
from helpers import ROOT, noise_png, serving_client, write_noise_pngs
from tiny_models import tiny_aecnn, tiny_baseline

SIZE = 64  # the toy evaluation size


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"tfcxr_d121": path, "tfcxr_aecnn": path}: both exports, toy sizes."""
    export_dir = tmp_path_factory.mktemp("exports")
    return {name: saved_model.export(model, export_dir, image_size=SIZE, model_name=name)
            for name, model in (("tfcxr_d121", tiny_baseline()), ("tfcxr_aecnn", tiny_aecnn()))}


def example_inputs(spec):
    """Valid inputs for a signature input: two encoded images, or two float images in [0, 1]."""
    if spec.dtype == tf.string:
        return tf.constant([noise_png(1, SIZE), noise_png(2, SIZE)])
    side = SIZE // 4 if spec.name == "latent" else SIZE
    return tf.constant(np.random.default_rng(3).random((2, side, side, 1), np.float32))


def is_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_every_binary_string_output_of_both_exports_ends_in_bytes(exports):
    seen = set()
    for path in exports.values():
        signatures = tf.saved_model.load(str(path)).signatures
        for name, signature in signatures.items():
            outputs = signature(**{key: example_inputs(spec) for key, spec in rest.input_specs(signature).items()})
            for output, tensor in outputs.items():
                if tensor.dtype != tf.string:
                    continue
                seen.add(output)
                binary = not all(is_utf8(value) for value in tensor.numpy().ravel())
                assert not binary or output.endswith(rest.BYTES_SUFFIX), \
                    f"{path} {name}: string output {output!r} holds binary bytes but lacks the _bytes suffix"
    assert seen == {"labels", "latent_png_bytes"}  # the walk reached both kinds


def test_a_binary_output_without_the_suffix_is_refused():
    """The stand-in refuses to write such an output as a JSON string (TF Serving would break the JSON)."""
    with pytest.raises(rest.NotJSONWritable, match="'latent_png' holds bytes that are not UTF-8"):
        rest.response_body({"latent_png": tf.constant([noise_png(0, SIZE)])}, rows=1)
    assert (rest.response_body({"latent_png_bytes": tf.constant([noise_png(0, SIZE)])}, rows=1)
            == {"predictions": [b64(noise_png(0, SIZE))]})


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def aecnn_url(exports):
    with rest.serving(exports["tfcxr_aecnn"]) as url:
        yield url


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def test_row_format_request_and_response_shapes(exports, aecnn_url):
    loaded = tf.saved_model.load(str(exports["tfcxr_aecnn"]))
    images = [noise_png(4, SIZE), noise_png(5, SIZE)]
    status, body = post(f"{aecnn_url}:predict", {"instances": [b64(data) for data in images]})
    assert status == 200 and len(body["predictions"]) == 2
    expected = loaded.signatures["serving_default"](image_bytes=tf.constant(images))["probabilities"].numpy()
    for row, probabilities in zip(body["predictions"], expected):
        assert sorted(row) == ["labels", "probabilities"] and row["labels"] == list(LABELS)
        np.testing.assert_allclose(row["probabilities"], probabilities, atol=1e-6)

    status, body = post(f"{aecnn_url}:predict", {"signature_name": "compress", "instances": [b64(images[0])]})
    assert status == 200
    (row,) = body["predictions"]
    compressed = loaded.signatures["compress"](image_bytes=tf.constant(images[:1]))
    assert base64.b64decode(row["latent_png_bytes"]["b64"]) == compressed["latent_png_bytes"].numpy()[0]
    np.testing.assert_allclose(row["latent"], compressed["latent"].numpy()[0], atol=1e-6)

    latent = compressed["latent"].numpy()
    status, body = post(f"{aecnn_url}/versions/1:predict", {"signature_name": "reconstruct", "instances": latent.tolist()})
    assert status == 200  # one output: "predictions" holds the values themselves
    reconstruction = loaded.signatures["reconstruct"](latent=tf.constant(latent))["reconstruction"].numpy()
    np.testing.assert_allclose(np.array(body["predictions"]), reconstruction, atol=1e-5)


def test_columnar_format_and_errors(aecnn_url):
    status, body = post(f"{aecnn_url}:predict",
                        {"signature_name": "compress", "inputs": {"image_bytes": [b64(noise_png(6, SIZE))]}})
    assert status == 200 and sorted(body["outputs"]) == ["latent", "latent_png_bytes"]
    assert np.array(body["outputs"]["latent"]).shape == (1, SIZE // 4, SIZE // 4, 1)
    assert Image.open(io.BytesIO(base64.b64decode(body["outputs"]["latent_png_bytes"][0]["b64"]))).size == (16, 16)

    status, body = post(f"{aecnn_url}:predict", {"instances": [b64(b"not an image")]})
    assert status == 400 and "image_bytes" in body["error"]
    assert post(f"{aecnn_url}:predict", {"signature_name": "nope", "instances": [1]})[0] == 400
    request = b64(noise_png(0, SIZE))
    assert post(f"{aecnn_url}:predict", {"instances": [request], "inputs": [request]})[0] == 400
    assert post(aecnn_url.replace("tfcxr_aecnn", "other") + ":predict", {"instances": [request]})[0] == 404
    with urllib.request.urlopen(aecnn_url, timeout=60) as response:
        assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"


def test_row_format_with_named_inputs_for_a_single_input(exports, aecnn_url):
    """TF Serving takes {"instances": [{"image_bytes": {"b64": ...}}]} as it takes [{"b64": ...}]."""
    images = [noise_png(11, SIZE), noise_png(12, SIZE)]
    plain = post(f"{aecnn_url}:predict", {"instances": [b64(data) for data in images]})
    named = post(f"{aecnn_url}:predict", {"instances": [{"image_bytes": b64(data)} for data in images]})
    assert plain[0] == named[0] == 200 and named[1] == plain[1] and len(named[1]["predictions"]) == 2
    status, body = post(f"{aecnn_url}:predict", {"signature_name": "compress", "instances": [{"image_bytes": b64(images[0])}]})
    assert status == 200 and sorted(body["predictions"][0]) == ["latent", "latent_png_bytes"]


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """The signatures of a SavedModel whose serving_default takes two named inputs, a [None] and b [None, 2]."""
    module = tf.Module()
    module.add = tf.function(lambda a, b: {"sum": a + tf.reduce_sum(b, axis=1), "b_bytes": tf.strings.as_string(b)},
                             input_signature=[tf.TensorSpec([None], tf.float32, name="a"),
                                              tf.TensorSpec([None, 2], tf.float32, name="b")])
    path = str(tmp_path_factory.mktemp("two_inputs"))
    tf.saved_model.save(module, path, signatures={"serving_default": module.add})
    loaded = tf.saved_model.load(path)
    return {"loaded": loaded, **loaded.signatures}  # the loaded object keeps its signatures alive


def test_request_forms_follow_tf_serving(exports, two_inputs):
    """Each form of json_tensor.cc's row and columnar rules: what it accepts and what it answers 400."""
    signatures = tf.saved_model.load(str(exports["tfcxr_aecnn"])).signatures
    image = b64(noise_png(13, SIZE))
    accepted = [
        {"instances": [image]},  # one input: the values
        {"instances": [{"image_bytes": image}]},  # one input, named
        {"inputs": [image]},  # columnar: the value
        {"inputs": {"image_bytes": [image]}},  # columnar: named
        {"inputs": {"image_bytes": [image], "unused": 1}},  # other keys are ignored, as by TF Serving
        {"signature_name": "reconstruct", "inputs": {"latent": np.zeros([1, 4, 4, 1]).tolist()}},
    ]
    for body in accepted:
        status, answer = rest.predict(signatures, body)
        assert status == 200, (body, answer)
    refused = [
        ({"instances": [image, {"image_bytes": image}]}, "instance 1: expected a value or list"),
        ({"instances": [{"image_bytes": image}, image]}, "instance 1: expected an object"),
        ({"instances": [{"image": image}]}, "instance 0: its keys image must be the inputs image_bytes"),
        ({"instances": [{"image_bytes": image, "other": 1}]}, "must be the inputs image_bytes"),
        ({"instances": []}, '"instances" must be a non-empty list'),
        ({"inputs": {"image": [image]}}, 'missing named input(s) image_bytes in the "inputs" object'),
        ({"inputs": image}, "shape () does not match"),  # one b64 value is a scalar, not a batch
        ({"instances": [image], "inputs": [image]}, 'one of "instances"'),
        ({"signature_name": 3, "instances": [image]}, '"signature_name" must be a string'),
        ([image], "the request body must be a JSON object"),
        ({"instances": [{"b64": "not base64!"}]}, "invalid base64"),
    ]
    for body, message in refused:
        status, answer = rest.predict(signatures, body)
        assert status == 400 and message in answer["error"], (body, answer)

    pairs = {"instances": [{"a": 1.0, "b": [2.0, 3.0]}, {"a": 4.0, "b": [5.0, 6.0]}]}
    status, answer = rest.predict(two_inputs, pairs)
    assert status == 200 and [row["sum"] for row in answer["predictions"]] == [6.0, 15.0]
    assert base64.b64decode(answer["predictions"][0]["b_bytes"][0]["b64"]) == b"2.000000"
    status, answer = rest.predict(two_inputs, {"inputs": {"a": [1.0], "b": [[1.0, 1.0]]}})
    assert status == 200 and answer["outputs"]["sum"] == [3.0]
    for body, message in [({"instances": [1.0, 2.0]}, "instances is a plain list, but the signature has several"),
                          ({"inputs": [1.0]}, '"inputs" is a plain value, but the signature has several'),
                          ({"instances": [{"a": 1.0}]}, "its keys a must be the inputs a, b")]:
        status, answer = rest.predict(two_inputs, body)
        assert status == 400 and message in answer["error"], (body, answer)


class FailingSignature:
    """A signature with one input that raises `error` when called."""

    structured_input_signature = ((), {"x": tf.TensorSpec([None], tf.float32)})

    def __init__(self, error):
        self.error = error

    def __call__(self, **inputs):
        raise self.error


def test_errors_get_tf_servings_http_status_and_an_error_body():
    for error, status in [(tf.errors.InvalidArgumentError(None, None, "bad"), 400),
                          (tf.errors.ResourceExhaustedError(None, None, "out of memory"), 429),
                          (tf.errors.UnimplementedError(None, None, "no kernel"), 501),
                          (tf.errors.InternalError(None, None, "broken"), 500),
                          (MemoryError("no memory"), 500), (RuntimeError("a bug"), 500)]:
        answer = rest.predict({"serving_default": FailingSignature(error)}, {"instances": [1.0]})
        assert answer[0] == status and str(error).split(": ")[-1] in answer[1]["error"], answer


def raw_post(url, headers, body=b""):
    """POST with exactly these headers (no Content-Length unless given) -> (status, JSON body)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest("POST", parts.path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_request_size_limit_is_read_from_content_length_before_the_body(aecnn_url, exports):
    """A 50 MB request is answered 413 from its headers alone: no byte of the body is sent, and the
    server answers without waiting for one (it would wait past the client's timeout otherwise)."""
    predict = f"{aecnn_url}:predict"
    status, body = raw_post(predict, {"Content-Type": "application/json", "Content-Length": str(50_000_000)})
    assert status == 413 and body["error"] == (f"request body of 50000000 bytes is over the limit of "
                                               f"{rest.MAX_REQUEST_BYTES} bytes (serve_saved_model.py --max_request_bytes)")
    assert raw_post(predict, {"Content-Type": "application/json"})[0] == 411  # no Content-Length: not read
    assert raw_post(predict, {"Transfer-Encoding": "chunked"})[0] == 411
    assert raw_post(predict, {"Content-Length": "many"})[0] == 400
    request = json.dumps({"instances": [b64(noise_png(14, SIZE))]}).encode()
    with rest.serving(exports["tfcxr_aecnn"], max_request_bytes=len(request)) as url:  # the limit is configurable
        assert raw_post(f"{url}:predict", {"Content-Length": str(len(request))}, request)[0] == 200
        status, body = raw_post(f"{url}:predict", {"Content-Length": str(len(request) + 1)})
        assert status == 413 and f"over the limit of {len(request)} bytes" in body["error"]
    assert post(predict, {"instances": [b64(noise_png(14, SIZE))]})[0] == 200  # the server went on


def test_malformed_json_is_400_and_any_other_failure_500_with_an_error_body(aecnn_url, monkeypatch):
    predict = f"{aecnn_url}:predict"
    for text, message in [(b'{"instances": [', "JSON Parse error: Expecting value"), (b"", "The document is empty"),
                          (b"\xff\xfe{", "JSON Parse error"), (b"[" * 100_000 + b"]" * 100_000, "JSON Parse error")]:
        status, body = raw_post(predict, {"Content-Length": str(len(text))}, text)
        assert status == 400 and message in body["error"], body

    def fail(*args):
        raise RuntimeError("failed while writing the answer")

    monkeypatch.setattr(rest, "response_body", fail)  # inside predict: after the model ran
    assert post(predict, {"instances": [b64(noise_png(15, SIZE))]}) == (
        500, {"error": "RuntimeError: failed while writing the answer"})
    monkeypatch.setattr(rest, "parse_body", fail)  # in the request handler, outside predict
    assert post(predict, {"instances": [b64(noise_png(15, SIZE))]}) == (
        500, {"error": "RuntimeError: failed while writing the answer"})
    monkeypatch.undo()
    assert post(predict, {"instances": [b64(noise_png(15, SIZE))]})[0] == 200  # the server went on


def test_serving_client_writes_the_latent_pngs_of_compress(exports, aecnn_url, tmp_path):
    files = write_noise_pngs(tmp_path, (7, 8), SIZE)
    out_dir = tmp_path / "latents"
    predict = f"{aecnn_url}:predict"
    result = serving_client(predict, "--signature_name=compress", f"--out_dir={out_dir}", *files)
    assert result.returncode == 0, result.stderr
    compress = tf.saved_model.load(str(exports["tfcxr_aecnn"])).signatures["compress"]
    expected = compress(image_bytes=tf.constant([f.read_bytes() for f in files]))["latent_png_bytes"].numpy()
    lines = result.stdout.splitlines()
    for file, line, data in zip(files, lines, expected):
        written = out_dir / f"{file.stem}_latent.png"
        assert written.read_bytes() == data
        assert line == f"{file.name}: latent 16x16, PNG {len(data)} bytes -> {written}"
    assert sorted(p.name for p in out_dir.iterdir()) == ["image_7_latent.png", "image_8_latent.png"]  # no temporaries
    wrong = serving_client(predict, f"--out_dir={out_dir}", files[0])
    assert wrong.returncode == 1 and "--signature_name=compress" in wrong.stderr
    unwritable = serving_client(predict, "--signature_name=compress", f"--out_dir={files[0]}", files[0])  # a file, not a folder
    assert unwritable.returncode == 1 and unwritable.stderr.startswith(f"{files[0]}: cannot write the latent PNGs")


def test_serving_client_against_the_d121_export(exports, tmp_path):
    image = tmp_path / "one.png"
    image.write_bytes(noise_png(9, SIZE))
    with rest.serving(exports["tfcxr_d121"]) as url:
        result = serving_client(f"{url}:predict", image)
        assert result.returncode == 0, result.stderr
        refused = serving_client(f"{url}:predict", "--signature_name=compress", image)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(LABELS) and "one.png" in lines[0]
    expected = tf.saved_model.load(str(exports["tfcxr_d121"])).signatures["serving_default"](
        image_bytes=tf.constant([noise_png(9, SIZE)]))["probabilities"].numpy()[0]
    np.testing.assert_allclose([float(line.split()[1]) for line in lines[1:]], expected, atol=1e-4)
    assert refused.returncode == 1 and "HTTP 400" in refused.stderr and "compress" in refused.stderr


@pytest.mark.slow
def test_serve_saved_model_tool_answers_curl_style_requests(exports, tmp_path):
    tool = [sys.executable, str(ROOT / "tools" / "serve_saved_model.py")]
    environ = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}  # the default console
    server = subprocess.Popen([*tool, f"--saved_model={exports['tfcxr_d121']}", "--port=0", "--max_request_bytes=100000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    try:
        first = server.stdout.readline().split()
        assert first[:2] == ["serving", str(exports["tfcxr_d121"])] and first[3].endswith("/v1/models/tfcxr_d121:predict")
        status, body = post(first[3], {"instances": [b64(noise_png(10, SIZE))]})
        assert status == 200 and body["predictions"][0]["labels"] == list(LABELS)
        status, body = raw_post(first[3], {"Content-Length": "100001"})
        assert status == 413 and "over the limit of 100000 bytes" in body["error"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert "oneDNN" not in server.stderr.read()
    missing = subprocess.run([*tool, f"--saved_model={tmp_path}"], capture_output=True, text=True, timeout=300, env=environ)
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: {tmp_path}: no saved_model.pb (export with --mode=export)"
