"""The run's config tree (tfcxr.config), a run that owns it on resume, and a new codec that is one class.

The toy codec is defined here and nowhere else: registered in tfcxr.main's child process, it trains as
stage 2, is evaluated and is exported with no other change to the package.
"""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from tfcxr import config as config_lib
from tfcxr.config import CodecConfig, RunConfig
from helpers import concurrently, encode, run_mode, tfcxr_main


def test_flat_flags_and_dotted_fields_name_the_same_place():
    config = RunConfig.from_flags("aecnn", records_dir="r", batch_size=8, codec="residual", codec_width=16,
                                  init_codec="c.keras", epochs=3, seed=2)
    assert (config.data.records_dir, config.data.batch_size, config.schedule.epochs, config.runtime.seed) == (
        "r", 8, 3, 2)
    assert config.model.codec == CodecConfig("residual", {"width": 16}) and config.init.codec == "c.keras"
    assert config.get("model.codec.width") == 16 and config.get("model.codec.kind") == "residual"
    assert config.replace(**{"data.batch_size": 4}) == config.replace(batch_size=4)
    assert config.replace(codec="paper").model.codec == CodecConfig("paper")  # another kind: its own parameters
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.data.batch_size = 1
    with pytest.raises(KeyError, match="--split: not a field of the run's config"):
        config.replace(split="test")
    assert config_lib.describe("model.codec.width") == "--codec_width"
    assert config_lib.describe("init.codec") == "--init_codec"


def test_config_json_holds_what_applies_and_reads_back():
    config = RunConfig.from_flags("autoencoder", records_dir="r", codec="residual", codec_width=16)
    written = config.to_dict(omit=("model.backbone", "model.weights", "init.classifier"))
    assert written["model"] == {"codec": {"kind": "residual", "width": 16}}
    assert "classifier" not in written["init"] and written["stage"] == "autoencoder"
    assert RunConfig.from_dict(json.loads(json.dumps(written))) == config
    with pytest.raises(ValueError, match="data: unknown field\\(s\\) colour"):
        RunConfig.from_dict({"stage": "baseline", "data": {"colour": 1}})


@pytest.mark.slow
def test_a_run_owns_its_config_on_resume(records_dir, tmp_path):
    run = tmp_path / "run"
    tfcxr_main("--stage=2", f"--records_dir={records_dir}", f"--model_dir={run}", "--image_size=32",
               "--batch_size=8", "--epochs=1", "--steps_per_epoch=2", "--val_steps=1", "--learning_rate=1e-3")
    written = (run / "config.json").read_bytes()
    config = json.loads(written)
    assert config["data"]["batch_size"] == 8 and "augment" not in config["data"]  # stage 1's FMix is not stage 2's
    assert "backbone" not in config["model"] and config["model"]["codec"] == {"kind": "paper"}

    batch, codec = concurrently(lambda: tfcxr_main(f"--model_dir={run}", "--epochs=2", "--batch_size=4", expect=1),
                                lambda: tfcxr_main(f"--model_dir={run}", "--epochs=2", "--codec=residual", expect=1))
    assert batch.stderr.strip().splitlines()[-1].startswith(
        f"error: --batch_size=4 contradicts {run / 'config.json'} (data.batch_size = 8)")
    assert "error: --codec=residual contradicts" in codec.stderr
    assert (run / "config.json").read_bytes() == written  # neither refusal touched it

    resumed = tfcxr_main(f"--model_dir={run}", "--epochs=2")  # nothing else: records, sizes, rate from config.json
    assert "resuming from" in resumed.stdout and "best val_loss" in resumed.stdout
    assert json.loads((run / "config.json").read_text())["schedule"]["epochs"] == 2
    log = (run / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1"]
    fewer = tfcxr_main(f"--model_dir={run}", "--epochs=1", expect=1)
    assert "error: --epochs=1 contradicts" in fewer.stderr


TOY_CODEC = '''
import dataclasses
import keras
from keras import layers
from tfcxr.models import Codec, register_codec

@register_codec
class BoxCodec(Codec):
    """Average 4x4 blocks, a learned gain; nearest upsampling, a learned gain."""
    kind = "box"

    @dataclasses.dataclass(frozen=True)
    class Params:
        gain: int = 1

    def encode(self, image):
        x = layers.AveragePooling2D(4, name="box_pool")(image)
        x = layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant(self.params.gain), name="box_gain")(x)
        return layers.ReLU(max_value=1.0, dtype="float32", name="box_clip")(x)

    def decode(self, latent):
        x = layers.UpSampling2D(4, name="box_up")(latent)
        x = layers.Conv2D(1, 1, kernel_initializer="ones", name="box_detail")(x)
        return layers.ReLU(max_value=1.0, dtype="float32", name="box_reconstruction")(x)
'''


@pytest.mark.slow
def test_a_new_codec_is_one_class_that_trains_evaluates_and_exports(records_dir, tmp_path):
    run, export_dir = tmp_path / "run", tmp_path / "export"
    _, unknown = concurrently(
        lambda: run_mode("--stage=2", "--codec=box", f"--records_dir={records_dir}", f"--model_dir={run}",
                         "--image_size=32", "--batch_size=8", "--epochs=1", "--steps_per_epoch=2", "--val_steps=1",
                         setup=TOY_CODEC),
        lambda: tfcxr_main("--stage=2", "--codec=box", f"--records_dir={records_dir}", f"--model_dir={tmp_path / 'x'}",
                           expect=1))  # without the class: one line
    assert "error: --codec=box: no such codec; one of paper, residual" in unknown.stderr
    assert json.loads((run / "config.json").read_text())["model"]["codec"] == {"kind": "box", "gain": 1}
    concurrently(lambda: run_mode("--mode=evaluate", f"--model_dir={run}", "--split=val", setup=TOY_CODEC),
                 lambda: run_mode("--mode=export", f"--model_dir={run}", f"--export_dir={export_dir}", setup=TOY_CODEC))
    report = json.loads((run / "eval" / "val" / "reconstruction.json").read_text())
    assert report["codec"] == {"kind": "box", "gain": 1}
    served = tf.saved_model.load(str(export_dir / "tfcxr_autoencoder" / "1"))  # no Python class needed to serve
    image = encode(np.full((128, 128), 128, np.uint8))
    latent = served.signatures["compress"](image_bytes=tf.constant([image]))["latent"]
    assert latent.shape[1:] == (32, 32, 1)
    reconstruction = served.signatures["reconstruct"](latent=latent)["reconstruction"]
    np.testing.assert_allclose(reconstruction.numpy(), 128 / 255, atol=0.02)
