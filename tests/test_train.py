"""The training loop in this process: losses, plateau schedule, run files, callbacks' state, chief."""

import dataclasses
import json
import types

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfcxr import models, storage
from tfcxr.models.metrics import ReconstructionQuality
from tfcxr.constants import CLASSIFICATION_WEIGHT, NUM_LABELS, PLATEAU_FACTOR, PLATEAU_PATIENCE
from tfcxr.data import fmix
from tfcxr.train import callbacks as callbacks_lib
from tfcxr import stages
from tfcxr.config import RunConfig
from tfcxr.train import loop, strategy, tasks
from tiny_models import SIZES, as_task, tiny_task


@pytest.fixture(autouse=True)
def float32_policy():
    """train() sets the global precision policy; leave float32 to the tests that follow."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def train_config(records_dir, model_dir, **overrides):
    settings = dict(batch_size=8, epochs=1, steps_per_epoch=2, val_steps=2, weights=None, **SIZES)
    return RunConfig.from_flags("baseline", records_dir=str(records_dir), model_dir=str(model_dir),
                                **{**settings, **overrides})


def read_log(model_dir):
    return pd.read_csv(model_dir / "log.csv")


def test_stage3_loss_is_the_weighted_sum_of_bce_and_mse():
    labels = tf.constant([[1.0] * 7 + [0.0] * 7, [0.0] * 14])
    logits = tf.constant([np.linspace(-3, 3, NUM_LABELS), np.linspace(2, -1, NUM_LABELS)], tf.float32)
    image = tf.reshape(tf.range(32, dtype=tf.float32) / 32, [2, 4, 4, 1])
    reconstruction = tf.reverse(image, axis=[2])
    terms = tasks.joint_loss({"image": image, "labels": labels}, {"logits": logits, "reconstruction": reconstruction})

    probability = 1 / (1 + np.exp(-logits.numpy()))
    bce = -(labels * np.log(probability) + (1 - labels) * np.log(1 - probability)).numpy().mean(axis=1)
    mse = ((reconstruction - image).numpy() ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(terms["bce"], bce, rtol=1e-6)
    np.testing.assert_allclose(terms["mse"], mse, rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], CLASSIFICATION_WEIGHT * bce + (1 - CLASSIFICATION_WEIGHT) * mse, rtol=1e-6)
    assert CLASSIFICATION_WEIGHT == 0.9
    np.testing.assert_allclose(tasks.classification_loss({"labels": labels}, {"logits": logits})["loss"], bce, rtol=1e-6)
    np.testing.assert_allclose(
        tasks.reconstruction_loss({"image": image}, {"reconstruction": reconstruction})["loss"], mse, rtol=1e-6)


def test_stage_records():
    assert list(stages.STAGES) == ["baseline", "autoencoder", "aecnn"]
    assert [stages.STAGES[n].name for n in (1, "2", "aecnn")] == ["baseline", "autoencoder", "aecnn"]  # aliases
    with pytest.raises(KeyError, match="--stage=4: no such stage; one of baseline \\(1\\)"):
        stages.STAGES[4]
    labels = ("a", "b")
    metrics = {name: [type(m).__name__ for m in stage.task.metrics(labels)] for name, stage in stages.STAGES.items()}
    assert metrics == {"baseline": ["ClassificationAUC"], "autoencoder": ["ReconstructionQuality"],
                       "aecnn": ["ClassificationAUC", "ReconstructionQuality"]}
    assert [[e.name for e in stage.evaluators] for stage in stages.STAGES.values()] == [
        ["classification"], ["reconstruction"], ["classification", "reconstruction"]]
    assert [stage.classifies for stage in stages.STAGES.values()] == [True, False, True]
    config = RunConfig.from_flags("aecnn", records_dir="records", model_dir="run", batch_size=8,
                                  init_codec="a.keras", init_classifier="b.keras")
    assert stages.STAGES[1].task.augmentation(config).contrast is not None  # BL5's rotation + contrast, on the accelerator
    assert stages.STAGES[1].task.augmentation(config.replace(augment="fmix")) is None
    assert stages.STAGES[2].task.augmentation(config) is None
    assert stages.STAGES[3].task.augmentation(config).contrast is None  # the rotation only
    assert stages.STAGES[3].task.requires == ("init.codec", "init.classifier")
    assert stages.STAGES[1].task.requires == ()


def test_missing_earlier_stage_file_stops_before_anything_is_built(tmp_path):
    config = RunConfig.from_flags("aecnn", records_dir="records", model_dir=str(tmp_path / "run"), batch_size=8,
                                  init_codec=str(tmp_path / "stage2.keras"))
    with pytest.raises(FileNotFoundError, match="stage2.keras: file not found"):
        loop.train(stages.STAGES[3].task, config, strategy.make_strategy("one_device"))
    (tmp_path / "stage2.keras").touch()
    with pytest.raises(FileNotFoundError, match="needs --init_classifier"):
        loop.train(stages.STAGES[3].task, config, strategy.make_strategy("one_device"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_plateau_divides_the_learning_rate_after_patience_epochs_without_improvement(records_dir, tmp_path):
    # So small a learning rate that val_loss never improves by the relative threshold (1e-4), yet a cut
    # larger than PyTorch's eps (1e-8, below which a cut is skipped).
    config = train_config(records_dir, tmp_path, epochs=PLATEAU_PATIENCE + 3, steps_per_epoch=1, val_steps=1,
                          learning_rate=1e-6)
    loop.train(tiny_task(), config, strategy.make_strategy("one_device"))
    learning_rates = read_log(tmp_path)["learning_rate"].to_numpy()  # the rate each epoch trained with
    # PyTorch's count: epoch 1 sets the best, epochs 2..7 are bad 1..6 > patience 5: epoch 8 trains at 1e-7.
    np.testing.assert_allclose(learning_rates[: PLATEAU_PATIENCE + 2], 1e-6, rtol=1e-6)
    np.testing.assert_allclose(learning_rates[PLATEAU_PATIENCE + 2:], 1e-6 * PLATEAU_FACTOR, rtol=1e-6)


def plateau_rates(losses, plateau=None, **kwargs):
    """The learning rate each epoch trains with when `plateau` (default: ours with `kwargs`) sees `losses` as val_loss."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.optimizer = keras.optimizers.Adam(1e-4)
    plateau = plateau or callbacks_lib.ReduceLROnPlateau(**kwargs)
    plateau.set_model(model)
    plateau.on_train_begin()
    rates = []
    for epoch, loss in enumerate(losses):
        rates.append(float(model.optimizer.learning_rate.numpy()))
        plateau.on_epoch_end(epoch, {"val_loss": loss})
    return np.array(rates)


def test_plateau_threshold_is_relative_as_in_pytorch():
    """A stage-2 MSE improving 2% an epoch: Keras's absolute min_delta 1e-4 cuts at epochs 6 and 13, PyTorch never."""
    improving = 8e-4 * 0.98 ** np.arange(30)
    np.testing.assert_allclose(plateau_rates(improving), 1e-4)
    # Keras's ReduceLROnPlateau, for contrast: its absolute min_delta has the 7th epoch train at 1e-5.
    keras_plateau = keras.callbacks.ReduceLROnPlateau(factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE)
    assert np.argmax(plateau_rates(improving, keras_plateau) < 5e-5) == 6


def test_plateau_counts_patience_as_pytorch():
    """Flat loss: the rate drops after epochs 7, 13 and 19 (counting from 1): bad epochs > patience."""
    rates = plateau_rates(np.full(20, 0.5))
    expected = 1e-4 * PLATEAU_FACTOR ** np.array([0] * 7 + [1] * 6 + [2] * 6 + [3])
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    # Falling, but never below best * (1 - 1e-4): bad epochs. Falling 2e-4 an epoch: each resets the count.
    assert plateau_rates(0.5 * (1 - 0.9e-4 * (1 - 0.5 ** np.arange(8))))[-1] == pytest.approx(1e-5)
    assert plateau_rates(0.5 * (1 - 2e-4) ** np.arange(8))[-1] == pytest.approx(1e-4)


@pytest.mark.parametrize("cooldown", [0, 2])
def test_plateau_matches_torch_on_random_losses(cooldown):
    """Step for step against torch.optim.lr_scheduler.ReduceLROnPlateau, when torch is installed."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(cooldown)
    losses = np.cumprod(1 + rng.choice([-1e-3, -5e-5, 0.0, 2e-3], size=60))
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=5, cooldown=cooldown)
    torch_rates = []
    for loss in losses:
        torch_rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step(loss)
    np.testing.assert_allclose(plateau_rates(losses, cooldown=cooldown), torch_rates, rtol=1e-6)


def test_jit_compiled_step_gives_the_same_weights(records_dir, tmp_path):
    """--jit_compile (XLA) changes how a step runs, not what it computes."""
    trained = {}
    for jit_compile in (False, True):
        config = train_config(records_dir, tmp_path / str(jit_compile), steps_per_epoch=1, val_steps=1,
                              learning_rate=1e-2, jit_compile=jit_compile)
        trained[jit_compile] = loop.train(tiny_task(), config, strategy.make_strategy("one_device")).get_weights()
    keras.utils.set_random_seed(config.runtime.seed)  # as train() does: the weights both runs started from
    initial = tiny_task().build_model(config, ())
    for plain, compiled, start in zip(trained[False], trained[True], initial.get_weights()):
        np.testing.assert_allclose(compiled, plain, atol=1e-5)
        assert np.abs(plain - start).max() > 1e-3  # the step did move the weights


def test_jit_compile_refuses_batchnorm_synchronized_over_replicas():
    config = RunConfig.from_flags("baseline", records_dir="records", model_dir="run", batch_size=8, jit_compile=True)
    two_replicas = types.SimpleNamespace(num_replicas_in_sync=2)
    with pytest.raises(ValueError, match="pass --nosync_batchnorm or --nojit_compile"):
        loop.sync_batchnorm(config, two_replicas)
    assert loop.sync_batchnorm(config.replace(sync_batchnorm=False), two_replicas) is False
    assert loop.sync_batchnorm(config.replace(jit_compile=False), two_replicas) is True
    assert loop.sync_batchnorm(config, types.SimpleNamespace(num_replicas_in_sync=1)) is False


def test_adam_uses_pytorch_epsilon(records_dir, tmp_path):
    assert loop.make_optimizer(train_config(records_dir, tmp_path)).epsilon == 1e-8


def event_tags(directory):
    tags = set()
    for path in directory.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_stage2_run_writes_best_model_log_tensorboard_and_checkpoints(records_dir, tmp_path, monkeypatch):
    config = train_config(records_dir, tmp_path, epochs=2, image_size=32, resize_size=None, preview_images=2)
    manifest_reads = []
    read_manifest = storage.read_manifest
    monkeypatch.setattr(storage, "read_manifest", lambda path: manifest_reads.append(path) or read_manifest(path))
    loop.train(stages.STAGES[2].task, config, strategy.make_strategy("one_device"))
    assert len(manifest_reads) == 1  # opened once; train, val and preview pipelines read the same Records

    log = read_log(tmp_path)
    assert list(log["epoch"]) == [0, 1]
    assert {"loss", "val_loss", "learning_rate"} <= set(log.columns) and "val_auc" not in log
    quality = [f"val_{metric}{suffix}" for metric in ("psnr", "ssim") for suffix in ("", "_8bit", "_bicubic")]
    assert set(quality) <= set(log.columns) and np.isfinite(log[quality].to_numpy()).all()
    assert log["val_psnr_bicubic"].nunique() == 1  # the same validation images every epoch
    best = models.load_model(tmp_path / "best.keras")
    outputs = best(tf.zeros([1, 32, 32, 1]))
    assert outputs["reconstruction"].shape == (1, 32, 32, 1) and outputs["latent"].shape == (1, 8, 8, 1)
    assert not hasattr(best, "optimizer") or best.optimizer is None
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith("ckpt-2")
    assert {"epoch_loss", "epoch_learning_rate", "batch_loss"} <= event_tags(tmp_path / "tensorboard" / "train")
    assert {"epoch_loss", "input", "reconstruction", "latent", "epoch_psnr", "epoch_psnr_8bit", "epoch_psnr_bicubic",
            "epoch_ssim_8bit"} <= event_tags(tmp_path / "tensorboard" / "validation")
    assert not list(tmp_path.glob(".*partial*"))


def test_reconstruction_metrics_agree_with_the_evaluation_mode():
    """The loop's per-epoch PSNR / SSIM are --mode=evaluate's, per image, for all three candidates."""
    from tfcxr.evaluate import reconstruction

    keras.utils.set_random_seed(0)
    autoencoder = models.build_autoencoder()
    images = tf.image.resize(tf.random.stateless_uniform([3, 8, 8, 1], seed=(1, 2)), [32, 32], "bicubic")
    images = tf.clip_by_value(images, 0.0, 1.0)
    metrics = ReconstructionQuality().per_example(autoencoder, {"image": images}, autoencoder(images, training=False))
    expected = reconstruction.reconstructions(autoencoder.get_layer("encoder"), autoencoder.get_layer("decoder"), images)
    for suffix, method in (("", "autoencoder"), ("_8bit", "autoencoder_8bit"), ("_bicubic", "bicubic")):
        np.testing.assert_allclose(metrics[f"psnr{suffix}"], tf.image.psnr(expected[method], images, 1.0), rtol=1e-5)
        np.testing.assert_allclose(metrics[f"ssim{suffix}"], tf.image.ssim(expected[method], images, 1.0), rtol=1e-5)
    assert metrics["psnr"].shape == (3,) and not np.allclose(metrics["psnr"], metrics["psnr_bicubic"])


def test_classifier_run_logs_validation_auc_per_label(records_dir, tmp_path):
    loop.train(tiny_task(), train_config(records_dir, tmp_path, val_steps=None), strategy.make_strategy("one_device"))
    log = read_log(tmp_path)
    aucs = log[[column for column in log if column.startswith("val_auc_")]].to_numpy()
    assert aucs.shape == (1, NUM_LABELS)
    np.testing.assert_allclose(log["val_auc"], np.nanmean(aucs))
    assert {"epoch_auc", "epoch_auc_Cardiomegaly"} <= event_tags(tmp_path / "tensorboard" / "validation")


def test_device_augmentation_feeds_the_train_step_only(records_dir, tmp_path):
    """The augmentation layer changes what the train step sees (and the loss target), not val."""

    def mean_image(batch, outputs):
        return {"loss": tf.reduce_mean(batch["image"], axis=[1, 2, 3]) + 0.0 * tf.reduce_sum(outputs["logits"], -1)}

    @dataclasses.dataclass(frozen=True)
    class ConstantImages(tasks.Task):
        def augmentation(self, config):
            return keras.layers.Lambda(lambda images: 0.0 * images + 0.25)

    stage = as_task(ConstantImages, dataclasses.replace(tiny_task(), loss=mean_image, metrics=lambda label_names: []))
    loop.train(stage, train_config(records_dir, tmp_path), strategy.make_strategy("one_device"))
    log = read_log(tmp_path)
    assert log["loss"][0] == pytest.approx(0.25)
    assert log["val_loss"][0] != pytest.approx(0.25, abs=0.01)


def test_nan_loss_stops_training_before_anything_is_saved(records_dir, tmp_path):
    def nan_loss(batch, outputs):
        return {"loss": tf.reduce_sum(outputs["logits"], -1) * np.nan}

    stage = dataclasses.replace(tiny_task(), loss=nan_loss)
    with pytest.raises(loop.TrainingStopped, match="epoch 1, step 1: loss is nan"):
        loop.train(stage, train_config(records_dir, tmp_path), strategy.make_strategy("one_device"))
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints") is None
    assert not (tmp_path / "best.keras").exists()


BFLOAT16_EPSILON = 2.0**-8  # bfloat16 keeps 8 significant bits: a rounding is off by up to 0.4%


def test_bfloat16_step(records_dir, tmp_path):
    """Four steps computed in bfloat16 (variables in float32) follow the float32 steps within bfloat16's
    precision: the train and validation losses within two bfloat16 epsilons, each weight tensor's
    movement within eight (measured: 0.2% and 0.4%)."""
    runs = {}
    for precision in ("none", "bfloat16"):
        config = train_config(records_dir, tmp_path / precision, steps_per_epoch=4, val_steps=1, learning_rate=1e-2,
                              mixed_precision=precision)
        runs[precision] = (loop.train(tiny_task(), config, strategy.make_strategy("one_device")),
                           read_log(tmp_path / precision)[["loss", "val_loss"]].to_numpy())
    keras.mixed_precision.set_global_policy("float32")
    (plain, plain_losses), (bfloat16, bfloat16_losses) = runs["none"], runs["bfloat16"]
    conv = bfloat16.get_layer("classifier").get_layer("conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    np.testing.assert_allclose(bfloat16_losses, plain_losses, rtol=2 * BFLOAT16_EPSILON)
    keras.utils.set_random_seed(config.runtime.seed)  # as train() does: the weights both runs started from
    start = tiny_task().build_model(config, ())
    for plain_weights, bfloat16_weights, start_weights in zip(plain.get_weights(), bfloat16.get_weights(),
                                                              start.get_weights()):
        moved = plain_weights - start_weights
        assert np.abs(moved).max() > 1e-2  # four Adam steps of 1e-2 moved every tensor
        difference = np.linalg.norm((bfloat16_weights - start_weights) - moved)
        assert difference <= 8 * BFLOAT16_EPSILON * np.linalg.norm(moved)


def test_fmix_mixes_labels_in_the_same_loop(records_dir, tmp_path, monkeypatch):
    """The train step's batch is FMix's: each image is its own inside the batch's one mask and one
    partner's outside it, and its labels are mixed with that partner's by the mask's ratio."""
    config = train_config(records_dir, tmp_path, steps_per_epoch=1, val_steps=1, augment="fmix")
    seen = []  # the (images, labels) of each loss call: the train step's first, then validation's

    def record(images, labels):
        seen.append((images.numpy(), labels.numpy()))
        return np.float32(0)

    def recording_loss(batch, outputs):
        recorded = tf.py_function(record, [batch["image"], batch["labels"]], tf.float32)
        return {"loss": tasks.classification_loss(batch, outputs)["loss"] + 0.0 * recorded}

    task = dataclasses.replace(tiny_task(), loss=recording_loss)
    loop.train(task, config, strategy.make_strategy("one_device"))
    assert np.isfinite(read_log(tmp_path)[["loss", "val_loss", "val_auc"]].to_numpy()).all()
    mixed_images, mixed_labels = seen[0]  # [B, H, W, 1], [B, L]

    # The same first batch unmixed: the epoch's seeded pipeline with FMix left out.
    monkeypatch.setattr(fmix, "fmix", lambda images, labels, seed, *args, **kwargs: (images, labels))
    first = next(iter(task.dataset(config, "train", training=True, seed=loop.epoch_seed(config.runtime.seed, 0),
                                   repeat=True)))
    images, labels = first["image"].numpy(), first["labels"].numpy()
    kept = (mixed_images == images)[..., 0]  # [B, H, W]: pixels an image kept
    unmixed = kept.all(axis=(1, 2))  # images whose partner is themselves
    assert unmixed.sum() < len(images) - 1 and (labels[~unmixed] != labels[0]).any()  # FMix mixed distinct labels
    mask = kept[~unmixed].all(axis=0)  # [H, W]: the batch's one mask, where every mixed image kept its pixels
    partners = []
    for image, own in zip(mixed_images, unmixed):
        matches = [j for j in range(len(images)) if np.array_equal(image[~mask], images[j][~mask])]
        partners.append(matches[0])
        assert own or len(matches) == 1  # outside the mask: exactly one partner's pixels
    ratio = mask.mean()  # lambda, to the pixel: the mask keeps round(lambda * H * W) pixels
    np.testing.assert_allclose(mixed_labels, ratio * labels + (1 - ratio) * labels[partners],
                               atol=0.5 / mask.size + 1e-6)


def test_callback_state_survives_a_round_trip_through_json():
    plateau = callbacks_lib.ReduceLROnPlateau()
    plateau.wait, plateau.best, plateau.cooldown_counter = 3, np.float32(0.25), 1
    best_model = callbacks_lib.BestModel("best.keras")
    state = json.loads(json.dumps(callbacks_lib.callback_state([plateau, best_model]), default=float))

    fresh_plateau, fresh_best = callbacks_lib.ReduceLROnPlateau(), callbacks_lib.BestModel("best.keras")
    fresh_plateau.on_train_begin()  # the reset that restoring must come after
    callbacks_lib.restore_callback_state([fresh_plateau, fresh_best, keras.callbacks.TerminateOnNaN()], state)
    assert (fresh_plateau.wait, fresh_plateau.best, fresh_plateau.cooldown_counter) == (3, 0.25, 1)
    assert fresh_best.best == np.inf


def test_truncate_log_keeps_earlier_epochs_and_drops_a_cut_row(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\n0,0.5\n1,0.4\n2,0.3\n3,0.")
    callbacks_lib.truncate_log(log, 2)
    assert log.read_text() == "epoch,loss\n0,0.5\n1,0.4\n"
    callbacks_lib.truncate_log(tmp_path / "absent.csv", 2)  # nothing to do


def fake_strategy(task_type, task_id, cluster):
    resolver = types.SimpleNamespace(
        task_type=task_type, task_id=task_id, cluster_spec=lambda: tf.train.ClusterSpec(cluster))
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_only_the_chief_writes_into_the_run_directory(tmp_path):
    workers = {"worker": ["a:1", "b:1"]}
    assert strategy.is_chief(types.SimpleNamespace(cluster_resolver=None))
    assert strategy.is_chief(fake_strategy("worker", 0, workers))
    assert not strategy.is_chief(fake_strategy("worker", 1, workers))
    assert not strategy.is_chief(fake_strategy("worker", 0, {**workers, "chief": ["c:1"]}))
    assert strategy.is_chief(fake_strategy("chief", 0, {**workers, "chief": ["c:1"]}))
    assert strategy.write_dir(str(tmp_path), fake_strategy("worker", 0, workers)) == str(tmp_path)
    assert not strategy.write_dir(str(tmp_path), fake_strategy("worker", 1, workers)).startswith(str(tmp_path))


def test_latent_rate_is_the_mean_neighbour_difference_in_8bit_levels():
    flat = tf.fill([1, 8, 8, 1], 0.5)
    stripes = tf.tile(tf.constant([0.0, 1.0])[None, None, :, None], [1, 8, 4, 1])  # columns 0, 1, 0, 1, ...
    rates = tasks.latent_rate(tf.concat([flat, stripes], axis=0)).numpy()
    np.testing.assert_allclose(rates, [0.0, 0.5 * 255.0])  # stripes: 255 across, 0 down


def test_stage2_loss_adds_the_weighted_latent_rate_only_when_asked():
    config = RunConfig.from_flags("autoencoder", records_dir="r", codec="residual")
    assert tasks.reconstruction_loss_for(config) is tasks.reconstruction_loss
    image = tf.random.stateless_uniform([2, 16, 16, 1], seed=[1, 2])
    outputs = {"reconstruction": image * 0.9, "latent": tf.random.stateless_uniform([2, 4, 4, 1], seed=[3, 4])}
    terms = tasks.reconstruction_loss_for(config.replace(latent_rate_weight=1e-3))({"image": image}, outputs)
    mse = tasks.reconstruction_loss({"image": image}, outputs)["loss"]
    np.testing.assert_allclose(terms["mse"], mse)
    np.testing.assert_allclose(terms["loss"], mse + 1e-3 * tasks.latent_rate(outputs["latent"]), rtol=1e-6)
    with pytest.raises(ValueError, match="--latent_rate_weight=-1"):
        tasks.reconstruction_loss_for(config.replace(latent_rate_weight=-1.0))
    for stage in ("baseline", "aecnn"):  # the other stages have no such term: their config.json leaves it out
        assert "optimizer.latent_rate_weight" in stages.STAGES[stage].task.omits


def test_latent_rate_budget_charges_only_the_batch_rate_beyond_r_thumbnails():
    """--latent_rate_budget=r: w * max(0, mean latent rate - r * mean rate of the 8-bit bicubic thumbnails of
    the batch's images), the same for each example; nothing within the budget."""
    config = RunConfig.from_flags("autoencoder", records_dir="r", codec="residual", latent_rate_weight=1e-3)
    image = tf.random.stateless_uniform([2, 16, 16, 1], seed=[1, 2])
    outputs = {"reconstruction": image * 0.9, "latent": tf.random.stateless_uniform([2, 4, 4, 1], seed=[3, 4])}
    mse = tasks.reconstruction_loss({"image": image}, outputs)["loss"]
    rate, thumbnail = tasks.latent_rate(outputs["latent"]), tasks.thumbnail_rate(image)
    thumbnails = tf.round(tf.clip_by_value(tf.image.resize(image, (4, 4), "bicubic", antialias=True), 0, 1) * 255) / 255
    np.testing.assert_allclose(thumbnail, tasks.latent_rate(thumbnails), rtol=1e-6)
    budget = 0.5 * float(tf.reduce_mean(rate) / tf.reduce_mean(thumbnail))  # the latent spends twice its budget
    terms = tasks.reconstruction_loss_for(config.replace(latent_rate_budget=budget))({"image": image}, outputs)
    excess = float(tf.reduce_mean(rate)) - budget * float(tf.reduce_mean(thumbnail))
    np.testing.assert_allclose(terms["loss"], mse + 1e-3 * excess, rtol=1e-5)
    np.testing.assert_allclose(terms["rate_thumbnail"], thumbnail)
    within = tasks.reconstruction_loss_for(config.replace(latent_rate_budget=4 * budget))({"image": image}, outputs)
    np.testing.assert_array_equal(within["loss"], mse)
    for bad in (config.replace(latent_rate_budget=-1.0), config.replace(latent_rate_weight=0.0, latent_rate_budget=1.0)):
        with pytest.raises(ValueError, match="--latent_rate_budget=.*with --latent_rate_weight > 0"):
            tasks.reconstruction_loss_for(bad)
    for stage in ("baseline", "aecnn"):
        assert "optimizer.latent_rate_budget" in stages.STAGES[stage].task.omits


def test_latent_rate_weight_trains_a_smoother_latent(records_dir, tmp_path):
    """The same stage-2 steps with and without the rate term: with it, the latent's rate falls below
    the run without it (and the log carries both terms)."""
    rates = {}
    for weight in (0.0, 1.0):
        model_dir = tmp_path / f"w{weight}"
        config = train_config(records_dir, model_dir, epochs=1, steps_per_epoch=6, image_size=32, resize_size=None,
                              codec="residual", latent_rate_weight=weight, learning_rate=1e-2)
        model = loop.train(stages.STAGES[2].task, config, strategy.make_strategy("one_device"))
        images = next(iter(stages.STAGES[2].task.dataset(config, "val", training=False)))["image"]
        rates[weight] = float(tf.reduce_mean(tasks.latent_rate(model(images)["latent"])))
        assert ({"mse", "rate"} <= set(read_log(model_dir).columns)) == bool(weight)
    assert rates[1.0] < rates[0.0]


def test_cosine_schedule_decays_to_zero_over_the_run_without_plateau_cuts(records_dir, tmp_path):
    config = train_config(records_dir, tmp_path, epochs=2, steps_per_epoch=3, learning_rate=1e-3, lr_schedule="cosine")
    rate = loop.learning_rate(config, 6)
    np.testing.assert_allclose([float(rate(step)) for step in (0, 3, 6)], [1e-3, 0.5e-3, 0.0], atol=1e-9)
    assert loop.learning_rate(config.replace(lr_schedule="plateau")) == 1e-3
    with pytest.raises(ValueError, match="--lr_schedule=step: one of plateau, cosine"):
        loop.learning_rate(config.replace(lr_schedule="step"))
    loop.train(tiny_task(), config, strategy.make_strategy("one_device"))
    log = read_log(tmp_path)
    np.testing.assert_allclose(log["learning_rate"], [0.5e-3, 0.0], atol=1e-9)  # after 3 and 6 steps
    kinds = {type(callback).__name__ for callback in loop.make_callbacks(tiny_task(), config, False, None)}
    assert "ReduceLROnPlateau" not in kinds and "ReduceLROnPlateau" in {
        type(callback).__name__ for callback in loop.make_callbacks(tiny_task(), config.replace(lr_schedule="plateau"),
                                                                     False, None)}
