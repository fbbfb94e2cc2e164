"""A stand-in for TF Serving's REST predict API, over an exported SavedModel's signatures.

No TF Serving binary installs here, so tests, benchmarks and tools/serve_saved_model.py use
this: the request and response rules of TF Serving's REST API
(https://www.tensorflow.org/tfx/serving/api_rest, as tensorflow_serving/util/json_tensor.cc
applies them), applied to `tf.saved_model.load(path).signatures`.

    POST /v1/models/<name>[/versions/<version>]:predict
         {"signature_name": "serving_default" (the default), "instances": [...]}   row format
         {"signature_name": ..., "inputs": ...}                                     columnar format
    GET  /v1/models/<name>[/versions/<version>]                                     model status

- Row format: "instances" is a non-empty list, either of values (one named input: each instance
  is that input's value) or of objects {input name: value} with exactly the signature's inputs
  (any number of inputs, one included), never a mix; which of the two is decided by the first
  instance ({"b64": ...} is a value, not an object). Every input and every output shares the 0-th
  (batch) dimension, the number of instances. Response {"predictions": [...]}: the values, one
  per instance, when the signature has one output; else one object {output name: value} per instance.
- Columnar format: "inputs" is a value or a {"b64": ...} (one input), or an object holding every
  named input (other keys are ignored); the response is {"outputs": value} for one output, else
  {"outputs": {output name: value}}.
- Binary strings: a {"b64": ...} object in a request stands for its decoded bytes. An output
  whose name ends in `_bytes` is written as {"b64": ...}; any other string output as a JSON
  string. TF Serving writes bytes that are not UTF-8 into that string unchanged (broken JSON);
  the stand-in answers HTTP 500 naming the output instead, so tests catch such an output.
- Errors: {"error": message}, with TF Serving's HTTP status: 400 for a bad request (malformed
  JSON included) or an InvalidArgument from the model (an image above the size limits, bytes
  that are not an image), the status of the model's error code for other TensorFlow errors
  (HTTP_STATUS), 404 for another path or model name, 500 for any other failure.
- Request size: a body longer than max_request_bytes (MAX_REQUEST_BYTES unless set; the
  Content-Length header says, before anything is read) is answered 413 without being read; a
  request without Content-Length (chunked) 411.
"""

import base64
import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import tensorflow as tf

BYTES_SUFFIX = "_bytes"  # TF Serving: "Named tensors that have _bytes as a suffix ... have binary values"
DEFAULT_SIGNATURE = "serving_default"
MODEL_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?")
# Largest request body read: ~60 base64 radiograph PNGs, or predict_images' JSON floats of one 1024 image.
MAX_REQUEST_BYTES = 32 * 2**20
# TF Serving's HTTP status per TensorFlow error code (model_servers/http_server.cc, ToHTTPStatusCode).
HTTP_STATUS = {
    tf.errors.CANCELLED: 499, tf.errors.UNKNOWN: 500, tf.errors.INVALID_ARGUMENT: 400,
    tf.errors.DEADLINE_EXCEEDED: 504, tf.errors.NOT_FOUND: 404, tf.errors.ALREADY_EXISTS: 409,
    tf.errors.PERMISSION_DENIED: 403, tf.errors.RESOURCE_EXHAUSTED: 429, tf.errors.FAILED_PRECONDITION: 400,
    tf.errors.ABORTED: 409, tf.errors.OUT_OF_RANGE: 400, tf.errors.UNIMPLEMENTED: 501, tf.errors.INTERNAL: 500,
    tf.errors.UNAVAILABLE: 503, tf.errors.DATA_LOSS: 500, tf.errors.UNAUTHENTICATED: 401,
}


class RequestError(ValueError):
    """A request TF Serving answers with HTTP 400."""


class NotJSONWritable(ValueError):
    """A string output of bytes that are not UTF-8, under a name without the _bytes suffix."""


def input_specs(signature):
    """{input name: tf.TensorSpec} of a loaded signature."""
    return signature.structured_input_signature[1]


def is_b64(value):
    """TF Serving's base64 object: exactly one key, "b64", holding a string."""
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def _decode_b64(value):
    """A JSON value with every {"b64": ...} object replaced by its bytes."""
    if isinstance(value, dict):
        if not is_b64(value):
            raise RequestError(f'an object in a tensor value must be {{"b64": "<base64>"}}, got keys {sorted(value)}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as error:
            raise RequestError(f"invalid base64 in a b64 value ({error})") from None
    if isinstance(value, list):
        return [_decode_b64(item) for item in value]
    return value


def _tensor(name, value, spec):
    try:
        tensor = tf.constant(_decode_b64(value), dtype=spec.dtype)
    except (TypeError, ValueError) as error:
        raise RequestError(f"input {name!r}: not a {spec.dtype.name} tensor ({error})") from None
    if not spec.shape.is_compatible_with(tensor.shape):
        raise RequestError(f"input {name!r}: shape {tensor.shape} does not match the signature's {spec.shape}")
    return tensor


def _is_named(instance):
    """An instance object {input name: value} (a {"b64": ...} is a value)."""
    return isinstance(instance, dict) and not is_b64(instance)


def row_columns(instances, names):
    """"instances" -> {input name: [one value per instance]} (TF Serving's FillTensorMapFromInstancesList)."""
    if not isinstance(instances, list) or not instances:
        raise RequestError('"instances" must be a non-empty list')
    named = _is_named(instances[0])
    if not named and len(names) > 1:
        raise RequestError(f"instances is a plain list, but the signature has several inputs ({', '.join(names)}): "
                           "each instance must be an object {input name: value}")
    columns = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if _is_named(instance) != named:
            raise RequestError(f"instance {index}: expected {'an object' if named else 'a value or list'}, "
                               "as instance 0 (a list of values, or of objects; not a mix)")
        if not named:
            columns[names[0]].append(instance)
            continue
        if set(instance) != set(names):
            raise RequestError(f"instance {index}: its keys {', '.join(sorted(instance))} must be the inputs "
                               f"{', '.join(sorted(names))}")
        for name in names:
            columns[name].append(instance[name])
    return columns


def input_columns(value, names):
    """"inputs" -> {input name: value} (TF Serving's FillTensorMapFromInputsMap)."""
    if not isinstance(value, dict) or is_b64(value):
        if len(names) > 1:
            raise RequestError(f'"inputs" is a plain value, but the signature has several inputs ({", ".join(names)}): '
                               "it must be an object {input name: value}")
        return {names[0]: value}
    missing = [name for name in names if name not in value]
    if missing:
        raise RequestError(f"missing named input(s) {', '.join(missing)} in the \"inputs\" object")
    return {name: value[name] for name in names}


def request_tensors(signature, body):
    """A predict request body (dict) -> ({input name: tensor}, rows: the number of instances or None)."""
    specs = input_specs(signature)
    names = list(specs)
    if ("instances" in body) == ("inputs" in body):
        raise RequestError('a predict request has one of "instances" (row format) or "inputs" (columnar format)')
    if "instances" in body:
        columns, rows = row_columns(body["instances"], names), len(body["instances"])
    else:
        columns, rows = input_columns(body["inputs"], names), None
    return {name: _tensor(name, columns[name], spec) for name, spec in specs.items()}, rows


def json_value(name, array):
    """An output array -> nested JSON lists; strings as {"b64": ...} (name ending _bytes) or UTF-8 text."""
    if array.dtype != object:  # numbers and booleans
        return array.tolist()
    if name.endswith(BYTES_SUFFIX):
        encode = lambda data: {"b64": base64.b64encode(data).decode("ascii")}  # noqa: E731
    else:
        def encode(data):
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise NotJSONWritable(f"output {name!r} holds bytes that are not UTF-8 and its name does not "
                                      f"end in {BYTES_SUFFIX}: TF Serving's REST API cannot return it") from None
    return np.vectorize(encode, otypes=[object])(array).tolist()


def response_body(outputs, rows):
    """Signature outputs -> {"predictions": ...} (row format, `rows` instances) or {"outputs": ...}."""
    arrays = {name: outputs[name].numpy() for name in sorted(outputs)}
    if rows is None:
        values = {name: json_value(name, array) for name, array in arrays.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    for name, array in arrays.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise RequestError(f"output {name!r} has inconsistent batch size: {array.shape[:1]} "
                               f"for {rows} instances (the row format needs a batch dimension on every output)")
    values = {name: json_value(name, array) for name, array in arrays.items()}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{name: values[name][row] for name in values} for row in range(rows)]}


def predict(signatures, body):
    """TF Serving's REST predict on loaded signatures: request body -> (HTTP status, response body)."""
    try:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        name = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(name, str):
            raise RequestError('"signature_name" must be a string')
        if name not in signatures:
            raise RequestError(f'Serving signature name: "{name}" not found in signature def')
        inputs, rows = request_tensors(signatures[name], body)
        return 200, response_body(signatures[name](**inputs), rows)
    except RequestError as error:
        return 400, {"error": str(error)}
    except tf.errors.OpError as error:
        return HTTP_STATUS.get(error.error_code, 500), {"error": error.message}
    except NotJSONWritable as error:
        return 500, {"error": str(error)}
    except Exception as error:  # noqa: BLE001 (whatever else fails, the client gets an answer, as from TF Serving)
        return 500, {"error": f"{type(error).__name__}: {error}"}


def parse_body(data: bytes):
    """Request bytes -> the JSON value; RequestError (400) for malformed JSON, as TF Serving words it."""
    if not data.strip():
        raise RequestError("JSON Parse error: The document is empty")
    try:
        return json.loads(data)  # NaN and Infinity accepted, as by TF Serving
    except (ValueError, RecursionError) as error:
        raise RequestError(f"JSON Parse error: {error}") from None


class _Handler(BaseHTTPRequestHandler):
    loaded = None  # set per server: the loaded SavedModel (keeps its signatures alive)
    model_name = version = None
    max_request_bytes = MAX_REQUEST_BYTES

    def _servable(self, suffix):
        match = MODEL_PATH.fullmatch(self.path.removesuffix(suffix)) if self.path.endswith(suffix) else None
        return match and match["name"] == self.model_name and match["version"] in (None, str(self.version))

    def _not_found(self):
        return 404, {"error": f"Servable not found for request: {self.path}"}

    def _request_length(self):
        """The body's length from Content-Length, or the (status, body) refusing the request unread."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or "Content-Length" not in self.headers:
            return 411, {"error": "a predict request needs a Content-Length header (chunked bodies are not read)"}
        length = self.headers["Content-Length"].strip()
        if not length.isdigit():
            return 400, {"error": f"Content-Length {length!r} is not a byte count"}
        if int(length) > self.max_request_bytes:
            return 413, {"error": f"request body of {int(length)} bytes is over the limit of {self.max_request_bytes} "
                                  "bytes (serve_saved_model.py --max_request_bytes)"}
        return int(length)

    def _predict(self):
        if not self._servable(":predict"):
            return self._not_found()
        length = self._request_length()
        if isinstance(length, tuple):
            self.close_connection = True  # the body, if any, is left unread
            return length
        data = self.rfile.read(length)
        if len(data) < length:
            return 400, {"error": f"request body cut short: {len(data)} of {length} bytes"}
        try:
            body = parse_body(data)
        except RequestError as error:
            return 400, {"error": str(error)}
        return predict(self.loaded.signatures, body)

    def _status(self):
        if not self._servable(""):
            return self._not_found()
        return 200, {"model_version_status": [
            {"version": str(self.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}

    def _answer(self, handle):
        try:
            status, body = handle()
        except Exception as error:  # noqa: BLE001 (a failure anywhere still answers, with a JSON error body)
            status, body = 500, {"error": f"{type(error).__name__}: {error}"}
        self._reply(status, body)

    def do_POST(self):  # noqa: N802 (http.server's name)
        self._answer(self._predict)

    def do_GET(self):  # noqa: N802
        self._answer(self._status)

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def make_server(saved_model_dir, host="127.0.0.1", port=0, max_request_bytes=MAX_REQUEST_BYTES):
    """An HTTP server (not started) answering for DIR/<model_name>/<version> as TF Serving would.

    port 0: any free port (server.server_port says which). max_request_bytes: longer bodies get 413, unread.
    """
    path = Path(saved_model_dir)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{path}: no saved_model.pb (export with --mode=export)")
    attributes = {"loaded": tf.saved_model.load(str(path)), "model_name": path.parent.name,
                  "version": int(path.name) if path.name.isdigit() else 1, "max_request_bytes": max_request_bytes}
    return ThreadingHTTPServer((host, port), type("Handler", (_Handler,), attributes))


def model_url(server):
    """http://HOST:PORT/v1/models/<model_name>: add ":predict" for the predict API."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1/models/{server.RequestHandlerClass.model_name}"


@contextlib.contextmanager
def serving(saved_model_dir, host="127.0.0.1", port=0, max_request_bytes=MAX_REQUEST_BYTES):
    """Serves the SavedModel from a background thread; yields its model URL (see model_url)."""
    server = make_server(saved_model_dir, host, port, max_request_bytes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield model_url(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
