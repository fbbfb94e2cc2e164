"""A stand-in for TF Serving's REST predict API, over an exported SavedModel's signatures.

No TF Serving binary installs here, so tests, benchmarks and tools/serve_saved_model.py use
this: the request and response rules of TF Serving's REST API
(https://www.tensorflow.org/tfx/serving/api_rest), applied to `tf.saved_model.load(path).signatures`.

    POST /v1/models/<name>[/versions/<version>]:predict
         {"signature_name": "serving_default" (the default), "instances": [...]}   row format
         {"signature_name": ..., "inputs": ...}                                     columnar format
    GET  /v1/models/<name>[/versions/<version>]                                     model status

- Row format: with one named input each instance is that input's value, with several it is an
  object {input name: value}; every input and every output shares the 0-th (batch) dimension,
  the number of instances. Response {"predictions": [...]}: the values, one per instance, when
  the signature has one output; else one object {output name: value} per instance.
- Columnar format: "inputs" is the value (one input) or an object {input name: value}; the
  response is {"outputs": value} for one output, else {"outputs": {output name: value}}.
- Binary strings: a {"b64": ...} object in a request stands for its decoded bytes. An output
  whose name ends in `_bytes` is written as {"b64": ...}; any other string output as a JSON
  string. TF Serving writes bytes that are not UTF-8 into that string unchanged (broken JSON);
  the stand-in answers HTTP 500 naming the output instead, so tests catch such an output.
- Errors: {"error": message}: 400 for a bad request or an InvalidArgument from the model,
  404 for another path or model name.
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


class RequestError(ValueError):
    """A request TF Serving answers with HTTP 400."""


class NotJSONWritable(ValueError):
    """A string output of bytes that are not UTF-8, under a name without the _bytes suffix."""


def input_specs(signature):
    """{input name: tf.TensorSpec} of a loaded signature."""
    return signature.structured_input_signature[1]


def _decode_b64(value):
    """A JSON value with every {"b64": ...} object replaced by its bytes."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
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


def request_tensors(signature, body):
    """A predict request body (dict) -> ({input name: tensor}, rows: the number of instances or None)."""
    specs = input_specs(signature)
    if ("instances" in body) == ("inputs" in body):
        raise RequestError('a predict request has one of "instances" (row format) or "inputs" (columnar format)')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError('"instances" must be a non-empty list')
        if len(specs) == 1:
            columns = {next(iter(specs)): instances}
        else:
            if not all(isinstance(instance, dict) for instance in instances):
                raise RequestError(f"with several inputs ({', '.join(specs)}) each instance is an object")
            missing = sorted({name for instance in instances for name in specs if name not in instance})
            if missing:
                raise RequestError(f"instances lack the input(s) {', '.join(missing)}")
            columns = {name: [instance[name] for instance in instances] for name in specs}
        rows = len(instances)
    else:
        value = body["inputs"]
        named = isinstance(value, dict) and set(value) == set(specs)
        if len(specs) > 1 and not named:
            raise RequestError(f'"inputs" must be an object with the inputs {", ".join(sorted(specs))}')
        columns = value if named else {next(iter(specs)): value}
        rows = None
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
    if not isinstance(body, dict):
        return 400, {"error": "the request body must be a JSON object"}
    name = body.get("signature_name", DEFAULT_SIGNATURE)
    if name not in signatures:
        return 400, {"error": f'Serving signature name: "{name}" not found in signature def'}
    try:
        inputs, rows = request_tensors(signatures[name], body)
        return 200, response_body(signatures[name](**inputs), rows)
    except RequestError as error:
        return 400, {"error": str(error)}
    except tf.errors.InvalidArgumentError as error:
        return 400, {"error": error.message}
    except NotJSONWritable as error:
        return 500, {"error": str(error)}


class _Handler(BaseHTTPRequestHandler):
    loaded = None  # set per server: the loaded SavedModel (keeps its signatures alive)
    model_name = version = None

    def _servable(self, suffix):
        match = MODEL_PATH.fullmatch(self.path.removesuffix(suffix)) if self.path.endswith(suffix) else None
        found = match and match["name"] == self.model_name and match["version"] in (None, str(self.version))
        if not found:
            self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        return found

    def do_POST(self):  # noqa: N802 (http.server's name)
        if not self._servable(":predict"):
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except ValueError as error:
            return self._reply(400, {"error": f"JSON Parse error: {error}"})
        self._reply(*predict(self.loaded.signatures, body))

    def do_GET(self):  # noqa: N802
        if self._servable(""):
            self._reply(200, {"model_version_status": [
                {"version": str(self.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def make_server(saved_model_dir, host="127.0.0.1", port=0):
    """An HTTP server (not started) answering for DIR/<model_name>/<version> as TF Serving would.

    port 0: any free port (server.server_port says which).
    """
    path = Path(saved_model_dir)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{path}: no saved_model.pb (export with --mode=export)")
    attributes = {"loaded": tf.saved_model.load(str(path)), "model_name": path.parent.name,
                  "version": int(path.name) if path.name.isdigit() else 1}
    return ThreadingHTTPServer((host, port), type("Handler", (_Handler,), attributes))


def model_url(server):
    """http://HOST:PORT/v1/models/<model_name>: add ":predict" for the predict API."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1/models/{server.RequestHandlerClass.model_name}"


@contextlib.contextmanager
def serving(saved_model_dir, host="127.0.0.1", port=0):
    """Serves the SavedModel from a background thread; yields its model URL (see model_url)."""
    server = make_server(saved_model_dir, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield model_url(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
