"""The residual codec: contract, bicubic start, straight-through 8-bit rounding, knobs,
saving, training, and the stages / codec tool through --autoencoder=residual."""

import dataclasses
import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcxr import models
from tfcxr.constants import COMPRESSION
from tfcxr.models.compression import quantize, resize_round_trip
from tfcxr.models.codecs import residual as residual_codec
from tfcxr import stages
from tfcxr.config import RunConfig
from tfcxr.constants import LABELS
from tfcxr.train import callbacks
from helpers import concurrently, encode, run_mode, run_tool, tfcxr_main
from tiny_models import TOY_BACKBONE, TOY_BACKBONE_SETUP


def smooth_images(size, batch=2, seed=0):
    """Radiograph-like [B,size,size,1] in [0, 1]: smooth shapes plus fine ribs-like stripes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = [0.5 + 0.3 * np.sin(rng.uniform(3, 8) * x + rng.uniform(0, 6)) * np.cos(rng.uniform(2, 6) * y)
              + 0.08 * np.sin(rng.uniform(60, 90) * y + rng.uniform(0, 6)) for _ in range(batch)]
    return np.clip(np.stack(images)[..., None], 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def codec():
    keras.utils.set_random_seed(0)
    return models.build_codec("residual")


@pytest.mark.parametrize("size", [32, 96, 128])
def test_shapes_and_valid_images_at_any_multiple_of_4(codec, size):
    encoder, decoder = codec
    latent = encoder(4.0 * smooth_images(size) - 1.5)
    reconstruction = decoder(4.0 * latent - 1.5)
    assert latent.shape == (2, size // COMPRESSION, size // COMPRESSION, 1)
    assert reconstruction.shape == (2, size, size, 1)
    for image in (latent.numpy(), reconstruction.numpy()):
        assert image.min() >= 0.0 and image.max() <= 1.0


def step_image(size=64):
    """A sharp 0 / 1 step [1,size,size,1]: its antialiased bicubic thumbnail overshoots [0, 1]."""
    image = np.zeros((1, size, size, 1), np.float32)
    image[:, :, size // 2 + 1:] = 1.0
    return image


@pytest.mark.parametrize("images", [smooth_images(64), step_image()], ids=["smooth", "sharp_step"])
def test_untrained_codec_is_exactly_bicubic_resizing_through_a_clipped_thumbnail(codec, images):
    """Zero-initialised last convolutions: the untrained codec is the evaluation's bicubic_8bit, and
    before its rounding (the clipped float thumbnail through the decoder) exactly its float bicubic."""
    encoder, decoder = codec
    np.testing.assert_allclose(decoder(encoder(images)), resize_round_trip(images, "bicubic", quantized=True), atol=1e-6)
    thumbnail = tf.image.resize(images, (16, 16), "bicubic", antialias=True)  # [1,16,16,1], unclipped
    np.testing.assert_allclose(encoder(images), quantize(thumbnail), atol=1e-6)
    before_rounding = keras.Model(encoder.input, encoder.get_layer("latent_clip").output)(images)
    np.testing.assert_allclose(before_rounding, tf.clip_by_value(thumbnail, 0, 1), atol=1e-6)
    np.testing.assert_allclose(decoder(before_rounding), resize_round_trip(images, "bicubic"), atol=1e-6)


def test_the_step_image_overshoots_and_the_reference_clips_its_thumbnail():
    """What the sharp_step case above exercises: a thumbnail outside [0, 1] that the reference clips."""
    image = step_image()
    thumbnail = tf.image.resize(image, (16, 16), "bicubic", antialias=True)
    assert float(tf.reduce_min(thumbnail)) < -0.01 and float(tf.reduce_max(thumbnail)) > 1.01
    unclipped = tf.clip_by_value(tf.image.resize(thumbnail, (64, 64), "bicubic"), 0, 1)
    assert np.abs(unclipped - resize_round_trip(image, "bicubic")).max() > 1e-3


def test_straight_through_rounding_in_every_forward_pass():
    """Training and inference alike: exactly the level a PNG stores forward, the identity backward."""
    layer = residual_codec.StraightThroughRound()
    x = tf.constant([0.0, 0.1, 0.5001, 0.77, 1.0, 0.30196])
    stored = tf.cast(tf.round(x * 255), tf.uint8)  # what an 8-bit PNG holds
    for training in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        np.testing.assert_array_equal(y.numpy(), (tf.cast(stored, tf.float32) / 255.0).numpy())  # bit for bit
        np.testing.assert_array_equal(tape.gradient(y, x).numpy(), np.ones(6))  # straight through


def test_training_latent_is_what_an_8bit_png_stores_and_gradients_reach_the_encoder(codec):
    encoder, decoder = codec
    images = smooth_images(64)
    latent = encoder(images, training=True).numpy()
    np.testing.assert_allclose(latent * 255, np.round(latent * 255), atol=1e-4)
    np.testing.assert_array_equal(encoder(images), latent)  # inference: the same 8-bit latent
    autoencoder = models.build_autoencoder(encoder, decoder)
    with tf.GradientTape() as tape:
        error = autoencoder(images, training=True)["reconstruction"] - images
        loss = tf.reduce_mean(tf.square(error))
    gradients = tape.gradient(loss, autoencoder.trainable_variables)
    correction = encoder.get_layer("encoder_correction").kernel
    gradient = dict(zip([v.path for v in autoencoder.trainable_variables], gradients))[correction.path]
    assert np.abs(gradient.numpy()).max() > 0  # through the rounding and the bicubic upsizing


def test_capacity_knobs_and_parameter_counts():
    encoder, decoder = models.build_codec("residual")
    assert (encoder.count_params(), decoder.count_params()) == (833, 23_440)
    width, depth, encoder_depth = 16, 3, 3
    encoder, decoder = models.build_codec("residual", width=width, decoder_depth=depth, encoder_depth=encoder_depth)
    patch, hidden, last = 16 * width + width, 9 * width * width + width, 9 * width + 1
    assert encoder.count_params() == patch + (encoder_depth - 2) * hidden + last
    assert decoder.count_params() == (9 * width + width) + (depth - 2) * hidden + (9 * width * 16 + 16)
    paper_encoder, paper_decoder = models.build_codec("paper")
    assert (paper_encoder.count_params(), paper_decoder.count_params()) == (865, 160)
    with pytest.raises(ValueError, match="depth >= 2"):
        models.build_codec("residual", decoder_depth=1)
    with pytest.raises(ValueError, match="--codec=jpeg: no such codec; one of paper, residual"):
        models.build_codec("jpeg")
    with pytest.raises(ValueError, match="--codec=paper has no parameter width"):
        models.build_codec("paper", width=8)


def test_skips_add_each_hidden_convolution_to_its_input_and_start_as_bicubic():
    keras.utils.set_random_seed(0)
    plain = models.build_codec("residual", encoder_depth=4, decoder_depth=5)
    keras.utils.set_random_seed(0)
    skipped = models.build_codec("residual", encoder_depth=4, decoder_depth=5, skips=1)
    assert [m.count_params() for m in plain] == [m.count_params() for m in skipped]  # adds weigh nothing
    names = [layer.name for model in skipped for layer in model.layers if layer.name.endswith("_skip")]
    assert names == ["encoder_conv1_skip", "encoder_conv2_skip", "decoder_conv2_skip", "decoder_conv3_skip",
                     "decoder_conv4_skip"]  # every hidden 3x3 convolution but the decoder's first (1 channel in)
    decoder = skipped[1]
    x = decoder.get_layer("decoder_conv1").output
    hidden = keras.Model(decoder.input, [x, decoder.get_layer("decoder_conv2").output,
                                         decoder.get_layer("decoder_conv2_skip").output])
    first, conv, added = hidden(smooth_images(32)[:, ::4, ::4])
    np.testing.assert_allclose(added, first + conv, atol=1e-6)
    images = smooth_images(32)
    np.testing.assert_allclose(skipped[1](skipped[0](images)), resize_round_trip(images, "bicubic", quantized=True),
                               atol=1e-6)  # zero last convolutions: still exactly bicubic
    with pytest.raises(ValueError, match="--codec_skips 0 or 1"):
        models.build_codec("residual", skips=2)


def random_detail(decoder, seed=0):
    """The decoder with every weight random (its last convolution starts at zero: no detail to average)."""
    rng = np.random.default_rng(seed)
    decoder.set_weights([rng.normal(0, 0.2, w.shape).astype(np.float32) for w in decoder.get_weights()])
    return decoder


def test_decode_flips_average_the_flipped_details_at_inference_and_train_on_one():
    """--codec_decode_flips=4: inference is clip(bicubic + the mean of the detail of each flip of the latent,
    flipped back); training (and stage 3's loss) decodes once, exactly the flips=1 decoder's graph."""
    encoder, plain = models.build_codec("residual")
    _, flipped = models.build_codec("residual", decode_flips=4)
    flipped.set_weights(random_detail(plain).get_weights())  # the same weights, in the same order
    latent = encoder(smooth_images(32))
    np.testing.assert_array_equal(flipped(latent, training=True), plain(latent, training=True))
    np.testing.assert_array_equal(flipped(latent, training=True), plain(latent))
    branch = flipped.get_layer("decoder_detail_flips").branch
    details = [tf.reverse(branch(tf.reverse(latent, axes)), axes) for axes in ([], [2], [1], [1, 2])]
    expected = tf.clip_by_value(residual_codec.BicubicResize("up")(latent) + tf.add_n(details) / 4, 0, 1)
    np.testing.assert_allclose(flipped(latent), expected, atol=1e-6)
    assert np.abs(flipped(latent) - plain(latent)).max() > 1e-3  # the flips differ: averaging does something
    _, two = models.build_codec("residual", decode_flips=2)
    two.set_weights(plain.get_weights())
    expected_two = tf.clip_by_value(residual_codec.BicubicResize("up")(latent) + (details[0] + details[1]) / 2, 0, 1)
    np.testing.assert_allclose(two(latent), expected_two, atol=1e-6)
    with pytest.raises(ValueError, match="--codec_decode_flips 1, 2 or 4"):
        models.build_codec("residual", decode_flips=3)


def test_one_flip_keeps_the_decoder_graph_and_checkpoints_of_earlier_versions(tmp_path):
    """--codec_decode_flips=1 (every run before the parameter, and the default) builds the decoder's layers inline,
    as before it existed, so a run's checkpoints from then restore into it (a resumed run keeps its weights)."""
    _, decoder = models.build_codec("residual", decoder_depth=3)
    assert [layer.name for layer in decoder.layers] == [
        "latent", "decoder_conv1", "decoder_conv2", "decoder_detail", "bicubic_up", "pixel_shuffle", "decoder_add",
        "reconstruction_clip"]
    _, flipped = models.build_codec("residual", decoder_depth=3, decode_flips=2)
    assert [layer.name for layer in flipped.get_layer("decoder_detail_flips").branch.layers] == [
        "latent", "decoder_conv1", "decoder_conv2", "decoder_detail", "pixel_shuffle"]
    random_detail(decoder)
    tf.train.Checkpoint(model=decoder).write(str(tmp_path / "ckpt"))
    _, restored = models.build_codec("residual", decoder_depth=3)
    tf.train.Checkpoint(model=restored).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    for saved, read in zip(decoder.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(saved, read)


def test_decode_flips_survive_saving_and_read_as_1_from_older_files(tmp_path):
    """The flips are a codec parameter: saved in the spec and the layer, loaded without custom objects;
    a file saved before the parameter existed decodes once."""
    encoder, decoder = models.build_codec("residual", decode_flips=4)
    autoencoder = models.build_autoencoder(encoder, random_detail(decoder))
    autoencoder.save(tmp_path / "flips.keras")
    loaded = keras.saving.load_model(tmp_path / "flips.keras", compile=False)
    images = smooth_images(32)
    np.testing.assert_array_equal(loaded(images)["reconstruction"], autoencoder(images)["reconstruction"])
    assert models.codec_of(loaded).params["decode_flips"] == 4
    assert loaded.get_layer("decoder").get_layer("decoder_detail_flips").flips == 4
    older = models.build_autoencoder(*models.build_codec("residual"))
    for model in (older, older.get_layer("encoder"), older.get_layer("decoder")):
        model.spec["codec"].pop("decode_flips")
    older.save(tmp_path / "old.keras")
    assert models.codec_of(models.load_model(tmp_path / "old.keras")).params["decode_flips"] == 1


def test_a_codec_saved_before_a_parameter_existed_reads_as_its_default(tmp_path):
    """A stage-2 file whose spec lacks a later parameter (skips) starts stage 3 with that parameter's default."""
    from tiny_models import tiny_densenet
    from tfcxr.train.tasks import codec_of_init

    autoencoder = models.build_autoencoder(*models.build_codec("residual", encoder_depth=3))
    for model in (autoencoder, autoencoder.get_layer("encoder"), autoencoder.get_layer("decoder")):
        model.spec["codec"].pop("skips")
    autoencoder.save(tmp_path / "old.keras")
    expected = models.make_codec({"kind": "residual", "encoder_depth": 3}).config()
    assert models.codec_of(models.load_model(tmp_path / "old.keras")) == expected
    assert codec_of_init(RunConfig("aecnn", init=dataclasses.replace(RunConfig("aecnn").init, codec=str(
        tmp_path / "old.keras")))) == {"model.codec": expected.to_dict()}
    aecnn = models.build_aecnn(*models.build_codec(expected), tiny_densenet())
    models.load_stage_weights(aecnn, codec_path=tmp_path / "old.keras")
    np.testing.assert_array_equal(aecnn.get_layer("encoder").get_weights()[0],
                                  autoencoder.get_layer("encoder").get_weights()[0])


def test_saved_and_loaded_without_custom_objects(codec, tmp_path):
    autoencoder = models.build_autoencoder(*codec)
    autoencoder.save(tmp_path / "best.keras")
    loaded = keras.saving.load_model(tmp_path / "best.keras", compile=False)
    images = smooth_images(32)
    np.testing.assert_array_equal(loaded(images)["reconstruction"], autoencoder(images)["reconstruction"])
    assert loaded.get_layer("encoder").get_layer("latent_round8").__class__ is residual_codec.StraightThroughRound


def test_mixed_precision_keeps_the_latent_and_reconstruction_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        encoder, decoder = models.build_codec("residual")
        latent = encoder(smooth_images(32), training=True)
        assert latent.dtype == tf.float32 and decoder(latent).dtype == tf.float32
        np.testing.assert_allclose(latent.numpy() * 255, np.round(latent.numpy() * 255), atol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_few_adam_steps_beat_bicubic():
    """Training moves it from bicubic upward (a broken residual path, clip or rounding would not)."""
    keras.utils.set_random_seed(0)
    autoencoder = models.build_autoencoder(*models.build_codec("residual", width=16, decoder_depth=3))
    optimizer = keras.optimizers.Adam(3e-3)
    images = tf.constant(smooth_images(64, batch=8))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(autoencoder(images, training=True)["reconstruction"] - images))
        optimizer.apply(tape.gradient(loss, autoencoder.trainable_variables), autoencoder.trainable_variables)
        return loss

    for _ in range(150):
        step()
    encoder, decoder = autoencoder.get_layer("encoder"), autoencoder.get_layer("decoder")
    codec_psnr = tf.reduce_mean(tf.image.psnr(decoder(quantize(encoder(images))), images, 1.0))
    bicubic_psnr = tf.reduce_mean(tf.image.psnr(resize_round_trip(images, "bicubic", quantized=True), images, 1.0))
    assert codec_psnr > bicubic_psnr + 0.5, (float(codec_psnr), float(bicubic_psnr))


def test_stage_config_builds_the_chosen_codec():
    config = RunConfig.from_flags("autoencoder", codec="residual", codec_width=8, codec_decoder_depth=2)
    autoencoder = stages.STAGES[2].task.build_model(config, ())
    assert models.codec_of(autoencoder).to_dict() == {"kind": "residual", "width": 8, "encoder_depth": 2,
                                                      "decoder_depth": 2, "skips": 0, "decode_flips": 1}
    assert autoencoder.get_layer("decoder").count_params() == (9 * 8 + 8) + (9 * 8 * 16 + 16)
    paper = stages.STAGES[2].task.build_model(RunConfig("autoencoder"), ())
    assert paper.count_params() == 865 + 160  # the paper's stays the default


@pytest.fixture(scope="module")
def stage2_residual(records_dir, tmp_path_factory):
    """A stage-2 run of the residual codec through python -m tfcxr.main (two steps, toy sizes)."""
    model_dir = tmp_path_factory.mktemp("runs") / "residual"
    tfcxr_main("--stage=2", "--flagfile=configs/stage2_residual.cfg", f"--records_dir={records_dir}",
               f"--model_dir={model_dir}", "--image_size=32", "--batch_size=8", "--epochs=1", "--steps_per_epoch=2",
               "--val_steps=1", "--residual_width=8")
    return model_dir


def test_the_rate_flagfile_fine_tunes_the_stage2_codec_under_a_budget(stage2_residual, records_dir, tmp_path):
    """configs/stage2_residual_rate.cfg from a stage-2 run: the codec (kind, parameters, flips) comes from it, the
    rate term is capped relative to the thumbnail (logged beside it), and a fine-tune gets no budget note."""
    import pandas as pd

    model_dir = tmp_path / "rate"
    result = tfcxr_main("--flagfile=configs/stage2_residual_rate.cfg", f"--records_dir={records_dir}",
                        f"--model_dir={model_dir}", f"--init_codec={stage2_residual / 'best.keras'}", "--image_size=32",
                        "--batch_size=8", "--epochs=1", "--steps_per_epoch=2", "--val_steps=1")
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["codec"] == json.loads((stage2_residual / "config.json").read_text())["model"]["codec"]
    assert config["model"]["codec"]["decode_flips"] == 4  # configs/stage2_residual.cfg's
    assert config["optimizer"]["latent_rate_budget"] == 0.97 and config["optimizer"]["latent_rate_weight"] == 1e-4
    log = pd.read_csv(model_dir / "log.csv")
    assert {"mse", "rate", "rate_thumbnail"} <= set(log.columns) and log["rate_thumbnail"].iloc[0] > 0
    assert "far below" not in result.stdout


@pytest.mark.slow
def test_stage2_then_stage3_on_the_residual_codec(stage2_residual, records_dir, tmp_path, monkeypatch):
    """Stage 3 takes the stage-2 residual codec and holds it. The classifier, whose trunk takes no part
    in that, is tiny_models' toy backbone (stage 3 with DenseNet121: test_train_stages.py, test_demo.py)."""
    monkeypatch.setitem(models.BACKBONES, "toy", TOY_BACKBONE)
    codec = {"kind": "residual", "width": 8, "encoder_depth": 4, "decoder_depth": 4, "skips": 0,
             "decode_flips": 4}  # the flagfile's depths and flips
    config = json.loads((stage2_residual / "config.json").read_text())
    assert config["model"] == {"codec": codec} and "backbone" not in config["model"]
    stage1 = tmp_path / "stage1" / "best.keras"
    stage1.parent.mkdir()
    callbacks.save_model_atomic(
        stages.STAGES[1].task.build_model(RunConfig("baseline").replace(weights="none", backbone="toy"), LABELS), stage1)
    common = [f"--records_dir={records_dir}", "--backbone=toy", "--image_size=128", "--batch_size=4", "--epochs=1",
              "--steps_per_epoch=2", "--val_steps=1", f"--init_classifier={stage1}",
              f"--init_codec={stage2_residual / 'best.keras'}"]

    # A codec flag that contradicts --init_codec is refused; with none, the run takes the stage-2 codec and,
    # at learning rate 0, the AECNN holds it exactly. Three runs into three folders, side by side.
    wrong, wider, result = concurrently(
        lambda: run_mode("--stage=3", *common, "--codec=paper", f"--model_dir={tmp_path / 'wrong'}", expect=1,
                         setup=TOY_BACKBONE_SETUP),
        lambda: run_mode("--stage=3", *common, "--codec_width=16", f"--model_dir={tmp_path / 'wider'}", expect=1,
                         setup=TOY_BACKBONE_SETUP),
        lambda: run_mode("--stage=3", "--flagfile=configs/stage3_residual.cfg", *common,
                         f"--model_dir={tmp_path / 'aecnn'}", "--learning_rate=0", setup=TOY_BACKBONE_SETUP))
    assert re.fullmatch(rf"error: --codec=paper contradicts --init_codec={re.escape(str(stage2_residual))}/best.keras: "
                        r"its codec is \{'kind': 'residual', 'width': 8, .*", wrong.stderr.splitlines()[-1])
    assert not (tmp_path / "wrong").exists()  # refused before anything is written
    assert wider.stderr.splitlines()[-1].startswith("error: --codec_width=16 contradicts --init_codec=")
    assert "val mean AUC" in result.stdout
    saved = json.loads((tmp_path / "aecnn" / "config.json").read_text())
    assert saved["model"]["codec"] == codec and saved["init"]["codec"] == str(stage2_residual / "best.keras")
    assert "patches_per_image" not in saved["data"]
    evaluated = run_mode("--mode=evaluate", f"--model_dir={tmp_path / 'aecnn'}", "--split=val", "--resamples=10",
                         setup=TOY_BACKBONE_SETUP)
    assert "mean ROC-AUC" in evaluated.stdout
    report = json.loads((tmp_path / "aecnn" / "eval" / "val" / "reconstruction.json").read_text())
    assert report["codec"] == codec
    aecnn = models.load_model(tmp_path / "aecnn" / "best.keras")
    stage2 = models.load_model(stage2_residual / "best.keras")
    for part in ("encoder", "decoder"):
        assert "bicubic_down" in [layer.name for layer in aecnn.get_layer("encoder").layers]
        for trained, expected in zip(aecnn.get_layer(part).weights, stage2.get_layer(part).weights, strict=True):
            np.testing.assert_array_equal(trained.numpy(), expected.numpy())


@pytest.mark.slow
def test_codec_tool_reports_bytes_and_round_trip_psnr(stage2_residual, tmp_path):
    from PIL import Image

    image = np.round(smooth_images(64, batch=1)[0, ..., 0] * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    result = run_tool("cxr_codec.py", "compress", tmp_path / "a.png", f"--model={stage2_residual / 'best.keras'}",
                      f"--out_dir={tmp_path / 'out'}", "--report", expect=0)
    match = re.search(r"a\.png -> a\.latent\.png: 64x64 -> 16x16 pixels, ([\d,]+) -> ([\d,]+) bytes .*\n"
                      r"\s+round trip: PSNR (\d+\.\d\d) dB .*bicubic (\d+\.\d\d) dB", result.stdout)
    assert match, result.stdout
    assert int(match[1].replace(",", "")) == (tmp_path / "a.png").stat().st_size
    assert int(match[2].replace(",", "")) == (tmp_path / "out" / "a.latent.png").stat().st_size
    model = models.load_model(stage2_residual / "best.keras")
    latent = np.asarray(Image.open(tmp_path / "out" / "a.latent.png"), np.float32)[None, ..., None] / 255
    decoded = np.round(np.clip(model.get_layer("decoder")(latent).numpy()[0, ..., 0], 0, 1) * 255)
    expected = 10 * np.log10(255**2 / np.mean((decoded - image.astype(np.float64)) ** 2))
    assert abs(float(match[3]) - expected) < 0.01
    plain = run_tool("cxr_codec.py", "compress", tmp_path / "a.png", f"--model={stage2_residual / 'best.keras'}",
                     f"--out_dir={tmp_path / 'plain'}", expect=0)
    assert "round trip" not in plain.stdout


@pytest.mark.parametrize("decode_flips", [1, 4])
def test_export_compress_and_reconstruct_serve_the_residual_codec(tmp_path, decode_flips):
    """A SavedModel of an AECNN on the residual codec: its compress / reconstruct signatures are the codec's
    (with --codec_decode_flips=4, reconstruct averages the 4 flips, as the Keras decoder at inference)."""
    import io

    from PIL import Image

    from tfcxr.export import saved_model
    from tiny_models import tiny_densenet

    keras.utils.set_random_seed(3)
    encoder, decoder = models.build_codec("residual", width=8, decode_flips=decode_flips)
    detail = (decoder if decode_flips == 1 else decoder.get_layer("decoder_detail_flips").branch).get_layer("decoder_detail")
    for layer in (encoder.get_layer("encoder_correction"), detail):  # not bicubic
        layer.set_weights([np.random.default_rng(0).normal(0, 0.02, w.shape).astype(np.float32) for w in layer.get_weights()])
    aecnn = models.build_aecnn(encoder, decoder, tiny_densenet())
    loaded = tf.saved_model.load(str(saved_model.export(aecnn, tmp_path, image_size=64, model_name="tfcxr_aecnn")))
    pixels = np.round(smooth_images(64, batch=1)[0, ..., 0] * 255).astype(np.uint8)
    compressed = loaded.signatures["compress"](image_bytes=tf.constant([encode(pixels)]))
    latent = encoder(pixels[None, ..., None].astype(np.float32) / 255)
    np.testing.assert_allclose(compressed["latent"].numpy(), latent.numpy(), atol=1e-6)
    stored = np.asarray(Image.open(io.BytesIO(compressed["latent_png_bytes"].numpy()[0])))
    np.testing.assert_array_equal(stored, np.round(np.clip(latent.numpy()[0, ..., 0], 0, 1) * 255))
    reconstruction = loaded.signatures["reconstruct"](latent=compressed["latent"])["reconstruction"]
    np.testing.assert_allclose(reconstruction.numpy(), decoder(latent).numpy(), atol=1e-6)


def test_evaluation_names_the_codec_and_scores_an_untrained_residual_codec_as_bicubic(records_dir, tmp_path):
    from tfcxr.evaluate import reconstruction

    assert models.codec_of(models.build_codec("paper")[0]).kind == "paper"
    autoencoder = models.build_autoencoder(*models.build_codec("residual", width=8))
    summary = reconstruction.evaluate_reconstruction(autoencoder, records_dir, tmp_path, stage="autoencoder",
                                                     inputs=stages.STAGES["autoencoder"].task.inputs, batch_size=16)
    assert summary["codec"] == {"kind": "residual", "width": 8, "encoder_depth": 2, "decoder_depth": 4, "skips": 0,
                                  "decode_flips": 1}
    assert "Codec: residual (--codec;" in (tmp_path / "eval" / "test" / "reconstruction.md").read_text()
    methods = summary["methods"]
    assert methods["autoencoder_8bit"]["psnr"] == pytest.approx(methods["bicubic_8bit"]["psnr"], abs=1e-3)
    for metric in ("psnr", "ssim"):  # its latent is the 8-bit one
        assert methods["autoencoder"][metric] == methods["autoencoder_8bit"][metric]
    assert summary["latent"].startswith("8-bit")
    paper = reconstruction.evaluate_reconstruction(models.build_autoencoder(), records_dir, tmp_path / "paper",
                                                   stage="autoencoder", inputs=stages.STAGES[2].task.inputs)
    assert paper["latent"].startswith("float")  # the paper's codec keeps the reference's float latent


@pytest.mark.slow
def test_serving_default_classifies_the_latent_png_that_compress_writes(tmp_path):
    """One latent: the AECNN export's serving_default probabilities are cxr_codec classify's on the
    latent PNG that cxr_codec compress writes (and that the compress signature returns)."""
    import io

    import pandas as pd
    from PIL import Image

    from tfcxr.export import saved_model
    from tiny_models import tiny_densenet

    keras.utils.set_random_seed(5)
    encoder, decoder = models.build_codec("residual", width=8)
    correction = encoder.get_layer("encoder_correction")  # not bicubic: a learned-looking correction
    correction.set_weights([np.random.default_rng(1).normal(0, 0.05, w.shape).astype(np.float32)
                            for w in correction.get_weights()])
    aecnn = models.build_aecnn(encoder, decoder, tiny_densenet(2))
    aecnn.save(tmp_path / "aecnn.keras")
    size = 64  # the export's evaluation size; the image is resized to it the same way everywhere
    loaded = tf.saved_model.load(str(saved_model.export(aecnn, tmp_path / "export", image_size=size,
                                                        model_name="tfcxr_aecnn")))
    pixels = np.round(smooth_images(72, batch=1, seed=3)[0, :70, :, 0] * 255).astype(np.uint8)  # 72x70
    Image.fromarray(pixels).save(tmp_path / "x.png")
    served = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(pixels)]))["probabilities"]

    out = tmp_path / "codec"
    run_tool("cxr_codec.py", "compress", tmp_path / "x.png", f"--model={tmp_path / 'aecnn.keras'}",
             f"--out_dir={out}", f"--size={size}", expect=0)
    run_tool("cxr_codec.py", "classify", out / "x.latent.png", f"--model={tmp_path / 'aecnn.keras'}",
             f"--out_dir={out}", expect=0)
    classified = pd.read_csv(out / "classify.csv", index_col="file").loc["x.latent.png"].to_numpy()
    np.testing.assert_allclose(classified, served.numpy()[0], atol=2e-6)  # the CSV's 6 decimals
    compressed = loaded.signatures["compress"](image_bytes=tf.constant([encode(pixels)]))
    stored = np.asarray(Image.open(io.BytesIO(compressed["latent_png_bytes"].numpy()[0])))
    np.testing.assert_array_equal(stored, np.asarray(Image.open(out / "x.latent.png")))
    np.testing.assert_allclose(compressed["latent"].numpy()[0, ..., 0], stored / np.float32(255), rtol=0, atol=1e-7)
