"""A stand-in for TF Serving's gRPC PredictionService.Predict over an exported SavedModel.

Needs the `serving` extra (pip install -e '.[serving]': tensorflow-serving-api, grpcio).

    server, port = grpc_standin.serve("workspace/exports/tfcxr_aecnn/1")  # 127.0.0.1:<port>
    ...
    server.stop(None)

Answers Predict as TF Serving does: model_spec.name must be the model's (the folder above the
version), model_spec.signature_name picks the signature (default serving_default), the
request's inputs are TensorProtos (tf.make_tensor_proto) and the response's outputs the
signature's outputs as TensorProtos. gRPC carries strings as bytes, so it needs no _bytes rule.
Errors: NOT_FOUND for another model, INVALID_ARGUMENT for a bad request or an InvalidArgument
from the model (bytes that are not an image).
"""

from concurrent import futures
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfcxr.export.rest import DEFAULT_SIGNATURE


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict on one SavedModel DIR/<model_name>/<version>."""

    def __init__(self, saved_model_dir):
        path = Path(saved_model_dir)
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{path}: no saved_model.pb (export with --mode=export)")
        self.loaded = tf.saved_model.load(str(path))
        self.model_name = path.parent.name
        self.version = int(path.name) if path.name.isdigit() else 1

    def Predict(self, request, context):  # noqa: N802 (the gRPC method's name)
        if request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({request.model_spec.name})")
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if name not in self.loaded.signatures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature name: "{name}" not found in signature def')
        try:
            inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
            outputs = self.loaded.signatures[name](**inputs)
        except tf.errors.InvalidArgumentError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
        except (TypeError, ValueError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"signature {name}: {error}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = name
        for key, tensor in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        return response


def serve(saved_model_dir, host="127.0.0.1", port=0):
    """Starts a gRPC server for the SavedModel (port 0: any free one). -> (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(saved_model_dir), server)
    port = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, port
