"""Models: shapes, parameter counts, custom layers, AECNN wiring, mixed precision, saving, weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcxr import models
from tfcxr.constants import COMPRESSION, IMAGENET_MEAN, IMAGENET_STD, NUM_LABELS
from helpers import torch_pixel_shuffle


def images(size, batch=2, channels=1, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, channels), dtype=np.float32)


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    return models.build_encoder()


@pytest.fixture(scope="module")
def decoder():
    keras.utils.set_random_seed(1)
    return models.build_decoder()


@pytest.fixture(scope="module")
def classifier():
    """DenseNet121 with random weights and free spatial size: built once (seconds)."""
    keras.utils.set_random_seed(2)
    return models.build_classifier(weights=None, image_size=None)


@pytest.fixture(scope="module")
def aecnn(encoder, decoder, classifier):
    return models.build_aecnn(encoder, decoder, classifier)


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("size", [64, 128, 896])
def test_encoder_and_decoder_shapes(encoder, decoder, size):
    latent = encoder(images(size))
    assert latent.shape == (2, size // COMPRESSION, size // COMPRESSION, 1)
    assert decoder(latent).shape == (2, size, size, 1)


def test_parameter_counts(encoder, decoder):
    assert encoder.count_params() == 865
    assert decoder.count_params() == 160


def test_latent_and_reconstruction_are_valid_images(encoder, decoder):
    latent = encoder(4.0 * images(64) - 2.0).numpy()
    reconstruction = decoder(4.0 * latent - 2.0).numpy()
    for image in (latent, reconstruction):
        assert image.min() >= 0.0 and image.max() <= 1.0


def test_convolutions_start_as_pytorch_layers(encoder, decoder, classifier):
    """kaiming_uniform(a=sqrt(5)) kernels and U(+-1/sqrt(fan_in)) biases, as nn.Conv2d / nn.Linear."""
    mid_gray = 0.5
    layers = {"encoder_conv": (encoder, 25, 0.0), "encoder_project": (encoder, 32, mid_gray),
              "decoder_conv": (decoder, 9, None), "logits": (classifier, 1024, 0.0)}
    for name, (model, fan_in, bias_center) in layers.items():
        kernel, bias = (w.numpy() for w in model.get_layer(name).weights)
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(kernel).max() <= bound, name
        if bias_center is None:  # the decoder: a mid-gray latent gives mid-gray in each of the 16 phases
            np.testing.assert_allclose(bias, mid_gray - mid_gray * kernel.sum(axis=(0, 1, 2)), atol=1e-6)
            gray = decoder(np.full([1, 8, 8, 1], mid_gray, np.float32)).numpy()[0, 4:-4, 4:-4]  # off the zero padding
            np.testing.assert_allclose(gray, mid_gray, atol=1e-5)
        else:
            assert np.abs(bias - bias_center).max() <= bound, name
        if kernel.size >= 400:  # enough draws to see the uniform's spread: std = bound / sqrt(3)
            assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1), name
            assert np.abs(kernel).max() > 0.9 * bound, name


def test_initial_latent_is_inside_the_clip_range_on_a_real_radiograph(real_dir):
    """Over 20 seeds the untrained latent of a real radiograph is (almost) all inside (0, 1), so the
    encoder gets gradient from the first step, and so is every sub-pixel phase of the reconstruction
    (with PyTorch's bias centred at 0 instead, many seeds start with almost none: docs/fidelity.md)."""
    from PIL import Image

    path = sorted((real_dir / "images").glob("*.png"))[0]
    image = np.asarray(Image.open(path).convert("L"), np.float32)[None, ..., None] / 255.0  # [1,1024,1024,1]
    shares, phase_shares = [], []
    for seed in range(20):
        keras.utils.set_random_seed(seed)
        outputs = models.build_autoencoder()(image)
        latent, reconstruction = outputs["latent"].numpy(), outputs["reconstruction"].numpy()
        shares.append(np.mean((latent > 0) & (latent < 1)))
        live = (reconstruction > 0) & (reconstruction < 1)  # [1,1024,1024,1]
        phases = live[0, :, :, 0].reshape(256, COMPRESSION, 256, COMPRESSION).mean(axis=(0, 2))  # [4, 4]
        phase_shares.append(phases.min())
    assert min(shares) > 0.9, shares
    # Every sub-pixel phase of the decoder starts with part of the image inside (0, 1), so every one
    # learns (PyTorch's bias leaves several phases dead: docs/fidelity.md).
    assert min(phase_shares) > 0.05 and np.median(phase_shares) > 0.99, phase_shares


def test_clipped_relu_values_and_gradients():
    clip = models.clipped_relu(name="clip")
    values = np.array([-3.0, -0.5, 0.01, 0.25, 0.5, 0.99, 1.5, 7.0], np.float32)
    x = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = clip(x)
    np.testing.assert_array_equal(y.numpy(), np.clip(values, 0.0, 1.0))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 0, 1, 1, 1, 1, 0, 0])


def test_pixel_shuffle_matches_pytorch_order_for_one_channel():
    x = images(5, batch=1, channels=COMPRESSION**2)  # [1,5,5,16]
    shuffled = models.PixelShuffle(COMPRESSION)(x).numpy()  # [1,20,20,1]
    expected = torch_pixel_shuffle(x.transpose(0, 3, 1, 2), COMPRESSION)  # [1,1,20,20] NCHW
    np.testing.assert_array_equal(shuffled[0, ..., 0], expected[0, 0])


def test_imagenet_normalization_values():
    normalize = models.ImageNetNormalization()
    gray = normalize(np.full((1, 2, 2, 1), 0.5, np.float32)).numpy()
    assert gray.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(gray[0, 0, 0], (0.5 - np.array(IMAGENET_MEAN)) / IMAGENET_STD, rtol=1e-6)
    rgb = normalize(np.array([[[[0.0, 0.5, 1.0]]]], np.float32)).numpy()
    np.testing.assert_allclose(rgb[0, 0, 0], (np.array([0.0, 0.5, 1.0]) - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)


@pytest.mark.parametrize("size", [32, 64])
def test_classifier_shapes(classifier, size):
    assert classifier.input_shape == (None, None, None, 3)
    assert classifier(images(size, channels=3)).shape == (2, NUM_LABELS)
    features = keras.Model(classifier.input, classifier.get_layer(models.FEATURE_LAYER).output)
    assert features(images(size, channels=3)).shape == (2, size // 32, size // 32, 1024)


def test_classifier_with_fixed_size_and_baseline():
    keras.utils.set_random_seed(3)
    classifier = models.build_classifier(image_size=32)
    assert classifier.input_shape == (None, 32, 32, 3)
    assert classifier.get_layer("logits").units == NUM_LABELS
    baseline = models.build_baseline(classifier)
    assert baseline.input_shape == (None, 32, 32, 1)
    x = images(32)
    expected = classifier(models.ImageNetNormalization()(x))
    np.testing.assert_allclose(baseline(x)["logits"], expected, rtol=1e-5, atol=1e-5)


def test_aecnn_wiring(aecnn, encoder, decoder, classifier):
    assert aecnn.get_layer("encoder") is encoder
    assert aecnn.get_layer("decoder") is decoder
    assert aecnn.get_layer("classifier") is classifier
    x = images(128)
    outputs = aecnn(x)
    latent = encoder(x)
    np.testing.assert_array_equal(outputs["latent"], latent)
    np.testing.assert_array_equal(outputs["reconstruction"], decoder(latent))
    expected = classifier(models.ImageNetNormalization()(latent))
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-5)
    assert outputs["latent"].shape == (2, 32, 32, 1) and outputs["logits"].shape == (2, NUM_LABELS)


def test_autoencoder_builds_its_parts_when_not_given():
    autoencoder = models.build_autoencoder()
    assert autoencoder.get_layer("encoder").count_params() == 865
    assert autoencoder.get_layer("decoder").count_params() == 160
    outputs = autoencoder(images(64))
    assert set(outputs) == {"latent", "reconstruction"}
    assert outputs["reconstruction"].shape == (2, 64, 64, 1)


def test_mixed_precision_keeps_outputs_float32(mixed_bfloat16):
    encoder, decoder = models.build_encoder(), models.build_decoder()
    classifier = models.build_classifier(image_size=None)
    assert encoder.get_layer("encoder_conv").compute_dtype == "bfloat16"  # the policy took effect
    outputs = models.build_aecnn(encoder, decoder, classifier)(images(128))
    assert {name: value.dtype for name, value in outputs.items()} == dict.fromkeys(outputs, tf.float32)
    assert models.build_baseline(classifier)(images(32))["logits"].dtype == tf.float32


def built_models(encoder, decoder, classifier, aecnn):
    return {
        "encoder": encoder,
        "decoder": decoder,
        "autoencoder": models.build_autoencoder(encoder, decoder),
        "baseline": models.build_baseline(classifier),
        "aecnn": aecnn,
    }


@pytest.mark.parametrize("name", ["encoder", "decoder", "autoencoder", "baseline", "aecnn"])
def test_saved_and_loaded_models_give_identical_outputs(encoder, decoder, classifier, aecnn, name, tmp_path):
    model = built_models(encoder, decoder, classifier, aecnn)[name]
    assert model.name == name
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)  # no custom_objects needed
    x = images(128)
    for got, expected in zip(keras.tree.flatten(loaded(x)), keras.tree.flatten(model(x)), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_load_stage_weights(encoder, decoder, classifier, tmp_path):
    autoencoder_path, baseline_path = tmp_path / "stage2.keras", tmp_path / "stage1.keras"
    models.build_autoencoder(encoder, decoder).save(autoencoder_path)
    models.build_baseline(classifier).save(baseline_path)
    keras.utils.set_random_seed(4)
    fresh = models.build_aecnn(models.build_encoder(), models.build_decoder(), models.build_classifier())
    models.load_stage_weights(fresh, autoencoder_path, baseline_path)
    for name, source in {"encoder": encoder, "decoder": decoder, "classifier": classifier}.items():
        for loaded, expected in zip(fresh.get_layer(name).get_weights(), source.get_weights(), strict=True):
            np.testing.assert_array_equal(loaded, expected)

    with pytest.raises(FileNotFoundError, match="missing.keras"):
        models.load_stage_weights(fresh, tmp_path / "missing.keras", baseline_path)
    with pytest.raises(ValueError, match="stage2.keras: has no 'classifier'"):
        models.load_stage_weights(fresh, classifier_path=autoencoder_path)
    residual = models.build_autoencoder(*models.build_codec("residual", width=8))
    residual.save(tmp_path / "residual.keras")
    with pytest.raises(ValueError, match="residual.keras: its codec .*'residual'.* is not the one this run builds"):
        models.load_stage_weights(fresh, codec_path=tmp_path / "residual.keras")
    keras.Model(classifier.input, classifier.output).save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match="plain.keras: not a tfcxr model"):
        models.load_model(tmp_path / "plain.keras")


def test_models_say_what_they_are(encoder, decoder, classifier, tmp_path):
    """The task, codec, backbone and labels are in each saved config, read back without building the model."""
    aecnn = models.build_aecnn(encoder, decoder, classifier)
    aecnn.save(tmp_path / "aecnn.keras")
    spec = models.read_spec(tmp_path / "aecnn.keras")
    assert (spec["task"], spec["codec"], spec["backbone"], len(spec["labels"])) == (
        "aecnn", {"kind": "paper"}, "densenet121", 14)
    loaded = models.load_model(tmp_path / "aecnn.keras")
    assert loaded.spec == spec and models.spec_of(loaded.get_layer("encoder"))["task"] == "encoder"
    assert models.compresses(loaded) and models.classifies(loaded) and models.backbone_of(loaded).features == "relu"
    baseline = models.build_baseline(classifier)
    assert not models.compresses(baseline) and models.codec_of(baseline) is None


def test_missing_weights_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.h5: DenseNet121 weights not found"):
        models.build_classifier(weights=tmp_path / "nowhere.h5")


def test_unreadable_weights_file(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=r"garbage\.h5: cannot load as DenseNet121 notop weights"):
        models.build_classifier(weights=path, image_size=32)


def test_local_weights_file_is_loaded(classifier, tmp_path):
    path = tmp_path / "notop.weights.h5"
    keras.Model(classifier.input, classifier.get_layer(models.FEATURE_LAYER).output).save_weights(path)
    loaded = models.build_classifier(weights=path)
    for name in ("conv1_conv", "conv5_block16_2_conv", "bn"):
        for got, expected in zip(loaded.get_layer(name).get_weights(), classifier.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, expected)


def test_imagenet_download_failure_suggests_a_local_copy(monkeypatch):
    from keras.src.utils import file_utils  # what keras.applications downloads with

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- offline")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match=models.NOTOP_WEIGHTS) as error:
        models.build_classifier(weights="imagenet", image_size=32)
    assert "~/.keras/models/" in str(error.value) and "URL fetch failure" in str(error.value)


def batchnorm_step(layer, x):
    """One training call of `layer` on x: (output, d sum(output * w) / d [x, gamma, beta]) with a fixed w."""
    weight = tf.constant(np.random.default_rng(3).normal(size=x.shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        output = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(output, tf.float32) * weight)
    return output, tape.gradient(loss, [x, layer.gamma, layer.beta])


def test_torch_batchnorm_trains_like_pytorch_batchnorm2d():
    """Same output and gradients as Keras's layer; moving variance from the unbiased batch variance."""
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 6, 3)), tf.float32)
    torch_style = models.TorchBatchNormalization(momentum=0.9, epsilon=1e-5)
    keras_style = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (torch_style, keras_style):
        layer.build(x.shape)
        layer.gamma.assign([0.5, 1.0, 2.0])
        layer.beta.assign([0.1, -0.2, 0.3])
    (fused, fused_grads), (plain, plain_grads) = batchnorm_step(torch_style, x), batchnorm_step(keras_style, x)
    np.testing.assert_allclose(fused, plain, atol=1e-5)
    for got, expected in zip(fused_grads, plain_grads):
        np.testing.assert_allclose(got, expected, atol=1e-4)
    values = x.numpy().reshape(-1, 3)
    np.testing.assert_allclose(torch_style.moving_mean, 0.1 * values.mean(0), rtol=1e-5)
    np.testing.assert_allclose(torch_style.moving_variance, 0.9 + 0.1 * values.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(keras_style.moving_variance, 0.9 + 0.1 * values.var(0), rtol=1e-5)  # Keras: biased
    inference = torch_style(x, training=False).numpy()
    expected = (values - torch_style.moving_mean.numpy()) / np.sqrt(torch_style.moving_variance.numpy() + 1e-5)
    np.testing.assert_allclose(inference.reshape(-1, 3), expected * [0.5, 1.0, 2.0] + [0.1, -0.2, 0.3], atol=1e-4)

    torch = pytest.importorskip("torch")
    reference = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        reference.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    reference_output = reference(torch.tensor(x.numpy()).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(fused, reference_output.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(torch_style.moving_mean, reference.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(torch_style.moving_variance, reference.running_var.numpy(), rtol=1e-5)


def test_torch_batchnorm_under_mixed_bfloat16(mixed_bfloat16):
    layer = models.TorchBatchNormalization()
    output = layer(tf.random.normal([2, 4, 4, 8]), training=True)
    assert output.dtype == tf.bfloat16 and layer.moving_mean.dtype == tf.float32
    assert np.isfinite(layer.moving_variance.numpy()).all()


def test_classifier_batchnorm_is_pytorch_s_and_keeps_the_weights():
    """Every BatchNorm of the classifier: PyTorch's momentum and moving variance; torch_batchnorm
    copies each layer's weights and reuses every other layer."""
    image = keras.Input(shape=(8, 8, 2))
    conv = keras.layers.Conv2D(3, 3, name="conv")
    backbone = keras.Model(image, keras.layers.BatchNormalization(name="bn")(conv(image)))
    weights = [np.array(values, np.float32) for values in ([0.5, 1, 2], [0.1, 0.2, 0.3], [1, 2, 3], [4, 5, 6])]
    backbone.get_layer("bn").set_weights(weights)
    converted = models.torch_batchnorm(backbone)
    assert converted.get_layer("conv") is conv
    assert isinstance(converted.get_layer("bn"), models.TorchBatchNormalization)
    for got, expected in zip(converted.get_layer("bn").get_weights(), weights):
        np.testing.assert_array_equal(got, expected)
    x = images(8, channels=2)
    np.testing.assert_allclose(converted(x, training=False), backbone(x, training=False), atol=1e-6)

    classifier = models.build_classifier(weights=None, image_size=32)
    batchnorms = [layer for layer in classifier.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batchnorms) == 121
    assert all(type(layer) is models.TorchBatchNormalization and layer.momentum == 0.9 for layer in batchnorms)
