"""The gRPC client code of docs/serving.md against tfcxr.export.grpc_standin (TF Serving's PredictionService.Predict).

Needs the `serving` extra (tensorflow-serving-api); skipped without it.
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

pytest.importorskip("tensorflow_serving")
import grpc  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfcxr.constants import LABELS  # noqa: E402
from tfcxr.export import grpc_standin, saved_model  # noqa: E402
from helpers import noise_png  # noqa: E402
from tiny_models import tiny_aecnn  # noqa: E402

SIZE = 64


def predict(stub, signature_name, **inputs):
    """docs/serving.md's gRPC call: one PredictRequest, the outputs as numpy arrays."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tfcxr_aecnn"
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    response = stub.Predict(request, timeout=120)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


@pytest.fixture(scope="module")
def stub_and_model(tmp_path_factory):
    path = saved_model.export(tiny_aecnn(), tmp_path_factory.mktemp("exports"), image_size=SIZE, model_name="tfcxr_aecnn")
    server, port = grpc_standin.serve(path)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel), tf.saved_model.load(str(path))
    server.stop(None)


def test_every_aecnn_signature_over_grpc(stub_and_model):
    stub, loaded = stub_and_model
    images = [noise_png(0, SIZE), noise_png(1, SIZE)]
    served = predict(stub, "serving_default", image_bytes=images)
    expected = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"], expected["probabilities"].numpy(), atol=1e-6)
    assert [label.decode() for label in served["labels"][0]] == list(LABELS)

    compressed = predict(stub, "compress", image_bytes=images[:1])
    assert compressed["latent_png_bytes"][0] == loaded.signatures["compress"](
        image_bytes=tf.constant(images[:1]))["latent_png_bytes"].numpy()[0]
    assert Image.open(io.BytesIO(compressed["latent_png_bytes"][0])).size == (SIZE // 4, SIZE // 4)
    reconstruction = predict(stub, "reconstruct", latent=compressed["latent"])["reconstruction"]
    assert reconstruction.shape == (1, SIZE, SIZE, 1)
    pixels = np.asarray(Image.open(io.BytesIO(images[0])), np.float32)[None, ..., None] / 255
    probabilities = predict(stub, "predict_images", images=pixels)["probabilities"]
    np.testing.assert_allclose(probabilities, served["probabilities"][:1], atol=1e-5)


def test_grpc_errors(stub_and_model):
    stub, _ = stub_and_model
    with pytest.raises(grpc.RpcError) as error:
        predict(stub, "serving_default", image_bytes=[b"not an image"])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image_bytes" in error.value.details()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "another_model"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=60)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
