"""A codec is validated where it is used: stage 2's val_loss (so the plateau scheduler and best.keras)
on whole originals through the stored 8-bit latent; the paper's 128 resizes stay selectable. And a
stage-2 budget far below what the codec needs says so."""

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr.config import RunConfig
from tfcxr.data import pipeline, schema
from tfcxr.models.codecs.residual import ResidualCodec
from tfcxr.models.compression import crop_to_codec, quantize
from tfcxr.stages import STAGES
from tfcxr.train import loop, strategy
from helpers import ROOT, run_shard, write_tree


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def geometry(stage, **flags):
    return STAGES[stage].task.input_spec(RunConfig.from_flags(stage, **flags)).eval_geometry


def test_each_codec_declares_its_validation_and_the_flag_overrides_it():
    assert geometry("autoencoder", codec="residual") == "full"  # used on whole radiographs
    assert geometry("autoencoder", codec="paper") == "resize"  # the report's protocol
    assert geometry("autoencoder", codec="residual", codec_validation="resize") == "resize"
    assert geometry("autoencoder", codec="paper", codec_validation="full") == "full"
    assert geometry("aecnn", codec="residual") == "resize"  # stage 3: the classifier's 896 resize
    assert geometry("baseline") == "resize"
    config = RunConfig.from_flags("autoencoder", codec_validation="full")
    assert config.data.codec_validation == "full" and RunConfig.from_dict(config.to_dict()) == config
    assert "codec_validation" not in RunConfig("baseline").to_dict(omit=STAGES["baseline"].task.omits)["data"]
    with pytest.raises(ValueError, match="--codec_validation=whole: one of resize, full"):
        geometry("autoencoder", codec="residual", codec_validation="whole")


@pytest.fixture(scope="module")
def mixed_records(tmp_path_factory):
    """Records whose originals have several sizes, some not multiples of 4 (val: 4 images)."""
    root = write_tree(tmp_path_factory.mktemp("tree"), num_patients=8, size=48)
    rng = np.random.default_rng(1)
    for index, path in enumerate(sorted(root.glob("images/*.png"))):
        height, width = [(48, 48), (50, 38), (61, 44)][index % 3]
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(path)
    out = tmp_path_factory.mktemp("records")
    run_shard(root, out)
    return out


def originals(records_dir, split):
    """Each original of `split` decoded straight from its records, uint8 [H, W, 1]."""
    keys = [schema.ENCODED, schema.FORMAT, schema.HEIGHT, schema.WIDTH]
    images = []
    for record in tf.data.TFRecordDataset(pipeline.shard_files(records_dir, split)):
        features = schema.parse(record, keys)
        images.append(schema.decode_original(features[schema.ENCODED], features[schema.FORMAT],
                                             tf.cast(features[schema.HEIGHT], tf.int32),
                                             tf.cast(features[schema.WIDTH], tf.int32)).numpy())
    return images


def whole(image):
    """uint8 [H, W, 1] -> its top-left part with sides multiples of 4, float32 in [0, 1] as the pipeline's."""
    return np.asarray(crop_to_codec(image)).astype(np.float32) / np.float32(255)


def test_full_geometry_reads_every_original_at_its_own_size_in_batches_of_one_size(mixed_records):
    inputs = pipeline.InputSpec(schema.ENCODED, 16, eval_geometry="full")
    batches = list(pipeline.make_dataset(mixed_records, "train", inputs, 3, training=False))
    expected = sorted(whole(image).tobytes() for image in originals(mixed_records, "train"))
    got = [image for batch in batches for image in batch["image"].numpy()]
    assert sorted(image.tobytes() for image in got) == expected  # every original once, whole, top-left part
    sizes = {image.shape[:2] for image in got}
    assert sizes == {(48, 48), (48, 36), (60, 44)}  # 50x38 -> 48x36, 61x44 -> 60x44
    assert all(len(batch["image"].shape) == 4 and len(batch["image"]) <= 3 for batch in batches)
    with pytest.raises(ValueError, match="eval_geometry"):
        pipeline.InputSpec(schema.SMALL, 16, resize_size=20, eval_geometry="full")


def residual_run(records_dir, model_dir, **flags):
    config = RunConfig.from_flags(
        "autoencoder", records_dir=str(records_dir), model_dir=str(model_dir), codec="residual", codec_width=8,
        batch_size=8, image_size=32, epochs=1, steps_per_epoch=3, learning_rate=1e-2, **flags)
    model = loop.train(STAGES["autoencoder"].task, config, strategy.make_strategy("one_device"))
    return model, pd.read_csv(model_dir / "log.csv").iloc[-1]


def test_an_epoch_of_fewer_images_than_a_batch_is_refused_in_one_line(records_dir, tmp_path):
    """Without --steps_per_epoch an epoch is the train split over the batch: fewer images than a batch make no step,
    which is refused before anything is built or written (the flagfile's 128-patch batches on a few images)."""
    config = RunConfig.from_flags("autoencoder", records_dir=str(records_dir), model_dir=str(tmp_path / "run"),
                                  codec="residual", batch_size=100_000, image_size=32, epochs=1)
    with pytest.raises(ValueError, match=r"images make no step of --batch_size=100000; set --steps_per_epoch"):
        loop.train(STAGES["autoencoder"].task, config, strategy.make_strategy("one_device"))
    assert not (tmp_path / "run").exists()


def mse_through_8bit_latent(model, images):
    """Mean over images of MSE(decoder(round8(encoder(x))), x), each image as given."""
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    errors = []
    for image in images:
        image = tf.constant(image[None], tf.float32)  # [1,H,W,1]
        latent = encoder(image, training=False)
        np.testing.assert_array_equal(latent, quantize(latent))  # the latent a PNG stores
        errors.append(float(tf.reduce_mean(tf.square(decoder(quantize(latent), training=False) - image))))
    return float(np.mean(errors))


@pytest.mark.slow
def test_residual_stage2_validates_whole_originals_through_the_8bit_latent(records_dir, tmp_path, capsys):
    model, log = residual_run(records_dir, tmp_path)
    images = [whole(image) for image in originals(records_dir, "val")]
    assert images[0].shape == (128, 128, 1)  # the records' originals, not the 32 px patch size
    np.testing.assert_allclose(log["val_loss"], mse_through_8bit_latent(model, images), rtol=1e-5)
    resized = [tf.image.resize(image, [32, 32], antialias=True).numpy() for image in images]
    assert not np.isclose(log["val_loss"], mse_through_8bit_latent(model, resized), rtol=1e-2)
    assert log["val_psnr_8bit"] == log["val_psnr"]  # one latent: the stored one
    assert log["val_psnr_bicubic_8bit"] < log["val_psnr_bicubic"] + 1e-3
    assert "note: this run trains 1 epochs x 3 steps of 8 32-px images = 0 megapixels, far below the ~23,593" \
        in capsys.readouterr().out


@pytest.mark.slow
def test_the_paper_protocol_stays_selectable(records_dir, tmp_path):
    model, log = residual_run(records_dir, tmp_path, codec_validation="resize")
    resized = [image.numpy() for batch in pipeline.make_dataset(
        records_dir, "val", pipeline.InputSpec(schema.ENCODED, 32), 8, training=False) for image in batch["image"]]
    np.testing.assert_allclose(log["val_loss"], mse_through_8bit_latent(model, resized), rtol=1e-5)


def test_budget_note_only_far_below_the_codecs_pixels():
    task = STAGES["autoencoder"].task
    residual = RunConfig.from_flags("autoencoder", codec="residual", epochs=20, batch_size=32)  # 128-px patches
    note = task.budget_note(residual, 600)
    assert note.startswith("note: this run trains 20 epochs x 600 steps of 32 128-px images = 6,291 megapixels, far "
                           "below the ~23,593")
    assert task.budget_note(residual, 1125) is None  # half of it or more: no note
    # The budget is in pixels: the same steps at a quarter of the batch are far below, twice the batch is not, and
    # smaller patches count their pixels.
    assert task.budget_note(residual.replace(batch_size=8), 1125).startswith(
        "note: this run trains 20 epochs x 1125 steps of 8 128-px images = 2,949 megapixels")
    assert task.budget_note(residual.replace(batch_size=64), 600) is None
    assert task.budget_note(residual.replace(batch_size=128, image_size=64), 1125) is None
    assert task.budget_note(residual.replace(batch_size=32, image_size=64), 1125) is not None
    fine_tune = residual.replace(init_codec="stage2/best.keras")
    assert task.budget_note(fine_tune, 600) is None  # from a trained codec: a fine-tune, no budget to advise
    shipped = dict(line.removeprefix("--").split("=", 1) for line in (ROOT / "configs" / "stage2_residual.cfg")
                   .read_text().splitlines() if line.startswith("--"))
    assert {"epochs", "steps_per_epoch", "batch_size", "image_size"} <= set(shipped)  # its budget in steps
    flagfile = residual.replace(epochs=int(shipped["epochs"]), batch_size=int(shipped["batch_size"]),
                                image_size=int(shipped["image_size"]))
    assert task.budget_note(flagfile, int(shipped["steps_per_epoch"])) is None
    assert int(shipped["epochs"]) * int(shipped["steps_per_epoch"]) * int(shipped["batch_size"]) \
        * int(shipped["image_size"])**2 >= ResidualCodec.recommended_pixels  # the flagfile trains what it recommends
    assert task.budget_note(RunConfig.from_flags("autoencoder", codec="paper", epochs=1), 1) is None
    assert STAGES["baseline"].task.budget_note(RunConfig("baseline"), 1) is None


def test_stage3_classification_weight_is_a_config_field_the_loop_trains_with():
    from tfcxr.train import tasks

    batch = {"image": tf.fill([2, 8, 8, 1], 0.5), "labels": tf.constant([[1.0] * 14, [0.0] * 14])}
    outputs = {"logits": tf.fill([2, 14], 0.3), "reconstruction": tf.fill([2, 8, 8, 1], 0.4)}
    bce, mse = [tasks.joint_loss(batch, outputs)[name] for name in ("bce", "mse")]
    paper = STAGES["aecnn"].task.configured(RunConfig("aecnn"))
    np.testing.assert_allclose(paper.loss(batch, outputs)["loss"], 0.9 * bce + 0.1 * mse, rtol=1e-6)  # the paper's
    light = STAGES["aecnn"].task.configured(RunConfig.from_flags("aecnn", classification_weight=0.01))
    np.testing.assert_allclose(light.loss(batch, outputs)["loss"], 0.01 * bce + 0.99 * mse, rtol=1e-6)
    assert RunConfig.from_flags("aecnn", classification_weight=0.01).optimizer.classification_weight == 0.01
    assert "classification_weight" not in RunConfig("autoencoder").to_dict(omit=STAGES["autoencoder"].task.omits)["optimizer"]
    with pytest.raises(ValueError, match="--classification_weight=1.5: a weight in"):
        STAGES["aecnn"].task.configured(RunConfig.from_flags("aecnn", classification_weight=1.5))
