"""tools/import_torch.py and tfcxr.models.torch_port: PyTorch checkpoints as users hold them, into the
models training builds; the same logits as PyTorch's eval mode; one line for a checkpoint that does not fit."""

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402
from helpers import concurrently, run_tool, tfcxr_main  # noqa: E402

from tfcxr.constants import LABELS  # noqa: E402
from tfcxr.models import load_model, torch_port  # noqa: E402

torch.set_num_threads(1)
SIDE = 64


def random_densenet(num_labels=14, sigmoid_head=False, seed=0):
    torch.manual_seed(seed)
    return ref.randomize_batchnorm(ref.DenseNet121(num_labels, sigmoid_head), seed).eval()


def chexnet_state(module):
    """`module`'s state dict as CheXNet's checkpoint holds it: nn.DataParallel around a wrapper whose
    `densenet121` is torchvision's, with torchvision's pre-0.4 names (norm.1 for norm1) and no
    num_batches_tracked."""
    state = {}
    for name, value in module.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            name = re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", name)
            state[f"module.densenet121.{name}"] = value
    return state


def gray_images(count=2, side=SIDE, seed=0):
    return np.random.default_rng(seed).random((count, side, side, 1), dtype=np.float32)  # [B,H,W,1] in [0, 1]


def torch_eval(module, images):
    """PyTorch eval mode on the gray images replicated to RGB and ImageNet-normalized -> numpy."""
    with torch.no_grad():
        return module(ref.imagenet_normalize(ref.nchw(images))).numpy()


@pytest.mark.slow
def test_densenet121_returns_pytorch_eval_logits():
    module = random_densenet()
    model = torch_port.import_state(ref.state_dict_numpy(module), "densenet121")
    images = gray_images()
    logits = model(images, training=False)["logits"].numpy()
    np.testing.assert_allclose(logits, torch_eval(module, images), rtol=0, atol=1e-5)
    assert model.spec["labels"] == list(LABELS) and model.spec["task"] == "baseline"


@pytest.mark.slow
def test_chexnet_checkpoint_through_the_tool(tmp_path):
    """.pth.tar, nested under "state_dict" beside other entries, DataParallel + wrapper prefixes,
    pre-0.4 names, a Linear + Sigmoid head of 5 labels named on the command line."""
    module = random_densenet(num_labels=5, sigmoid_head=True, seed=1)
    checkpoint = tmp_path / "chexnet.pth.tar"
    torch.save({"epoch": 7, "best_loss": 0.15, "state_dict": chexnet_state(module)}, checkpoint)
    out = tmp_path / "out" / "chexnet.keras"
    names = "a,b,c,d,e"
    result = run_tool("import_torch.py", f"--checkpoint={checkpoint}", "--architecture=densenet121", f"--out={out}",
                      "--num_labels=5", f"--label_names={names}", expect=0)
    assert "its Sigmoid dropped" in result.stdout and "5 labels" in result.stdout
    model = load_model(out)
    images = gray_images(seed=2)
    probabilities = torch_eval(module, images)  # the Sigmoid head: probabilities
    logits = model(images, training=False)["logits"].numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probabilities, rtol=0, atol=1e-6)
    with torch.no_grad():
        linear = module.classifier[0](torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(
            module.features(ref.imagenet_normalize(ref.nchw(images)))), 1), 1)).numpy()
    np.testing.assert_allclose(logits, linear, rtol=0, atol=1e-5)
    assert model.spec["labels"] == names.split(",")
    assert sorted(p.name for p in out.parent.iterdir()) == ["chexnet.keras"]  # no temporary left


@pytest.mark.slow
def test_autoencoder_and_aecnn_compute_what_pytorch_does():
    torch.manual_seed(3)
    autoencoder = ref.Autoencoder().eval()
    torch.nn.init.constant_(autoencoder.encoder[2].bias, 0.5)
    model = torch_port.import_state(ref.state_dict_numpy(autoencoder), "autoencoder")
    images = gray_images(side=128)
    with torch.no_grad():
        latent, reconstruction = autoencoder(ref.nchw(images))
    outputs = model(images, training=False)
    np.testing.assert_allclose(outputs["latent"].numpy(), ref.nhwc(latent), atol=1e-6)
    np.testing.assert_allclose(outputs["reconstruction"].numpy(), ref.nhwc(reconstruction), atol=1e-6)

    torch.manual_seed(4)
    aecnn = ref.randomize_batchnorm(ref.AECNN(14), 4).eval()
    torch.nn.init.constant_(aecnn.encoder[2].bias, 0.5)
    model = torch_port.import_state({f"module.{k}": v for k, v in ref.state_dict_numpy(aecnn).items()}, "aecnn")
    with torch.no_grad():
        expected = [ref.nhwc(value) for value in aecnn(ref.nchw(images))]
    outputs = model(images, training=False)
    for name, value in zip(("latent", "reconstruction", "logits"), expected):
        np.testing.assert_allclose(outputs[name].numpy(), value, atol=1e-5, err_msg=name)
    assert model.spec["task"] == "aecnn" and model.spec["codec"]["kind"] == "paper"


@pytest.mark.parametrize("suffix, nesting", [(".pt", None), (".pth", "model"), (".pth.tar", "model_state_dict"),
                                             (".safetensors", None), (".npz", None)])  # the last two: flat
def test_every_format_and_nesting_reads_the_same_tensors(tmp_path, suffix, nesting):
    state = ref.Autoencoder().state_dict()
    path = tmp_path / f"autoencoder{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    elif suffix == ".npz":
        np.savez(path, **{name: value.numpy() for name, value in state.items()})
    else:
        torch.save({nesting: state, "optimizer": {"lr": 1e-4}} if nesting else state, path)
    read = torch_port.read_state_dict(path)
    assert set(read) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(read[name], value.numpy())


def test_reading_torch_files_without_torch_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    torch.save(ref.Autoencoder().state_dict(), path)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(torch_port.CheckpointError, match=r"needs torch \(pip install torch\), or save its state "
                                                         r"dict as \.safetensors or \.npz"):
        torch_port.read_state_dict(path)


def autoencoder_state():
    return ref.state_dict_numpy(ref.Autoencoder())


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("decoder.0.bias"), r"missing tensor decoder\.0\.bias \(expected shape \[16\]\) "
                                        r"\(1 of 6 autoencoder tensors missing, 0 unexpected\)"),
    (lambda s: s.update({"encoder.0.weight": np.zeros((32, 1, 3, 3), np.float32)}),
     r"tensor encoder\.0\.weight has shape \[32, 1, 3, 3\], autoencoder expects \[32, 1, 5, 5\] for encoder\.0\.weight"),
    (lambda s: s.update({"module.encoder.4.weight": np.zeros(3, np.float32)}),
     r"unexpected tensor module\.encoder\.4\.weight \(read as encoder\.4\.weight, shape \[3\]\): not part of "
     r"autoencoder"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line(change, message):
    state = autoencoder_state()
    change(state)
    with pytest.raises(torch_port.CheckpointError, match=message) as error:
        torch_port.import_state(state, "autoencoder", source="ae.pth")
    assert "\n" not in str(error.value) and str(error.value).startswith("ae.pth: ")


@pytest.mark.slow
def test_densenet_refusals_name_the_tensor():
    state = ref.state_dict_numpy(ref.DenseNet121(14))
    with pytest.raises(torch_port.CheckpointError, match=r"its head has 14 labels, not the 15 of --num_labels"):
        torch_port.import_state(state, "densenet121", num_labels=15)
    del state["features.denseblock3.denselayer7.norm2.running_var"]
    with pytest.raises(torch_port.CheckpointError,
                       match=r"missing tensor features\.denseblock3\.denselayer7\.norm2\.running_var "
                             r"\(expected shape \[128\]\)"):
        torch_port.import_state(state, "densenet121")
    with pytest.raises(torch_port.CheckpointError,
                       match=r"holds none of the 6 autoencoder tensors \(first: encoder\.0\.weight\) but features\."):
        torch_port.import_state(state, "autoencoder")


@pytest.mark.slow
def test_the_tool_refuses_with_one_line_and_writes_nothing(tmp_path):
    state = ref.Autoencoder().state_dict()
    del state["encoder.2.bias"]
    checkpoint = tmp_path / "ae.pth"
    torch.save(state, checkpoint)
    out = tmp_path / "out" / "ae.keras"
    result = run_tool("import_torch.py", f"--checkpoint={checkpoint}", "--architecture=autoencoder", f"--out={out}",
                      expect=1)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {checkpoint}: missing tensor encoder.2.bias (expected shape [1]) "
        "(1 of 6 autoencoder tensors missing, 0 unexpected)")
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def imported_densenet(tmp_path, seed):
    """A random torchvision-style DenseNet121 saved as .pth and imported through the tool: (module, .keras path)."""
    module = random_densenet(seed=seed)
    checkpoint = tmp_path / "d121.pth"
    torch.save(module.state_dict(), checkpoint)
    out = tmp_path / "d121.keras"
    run_tool("import_torch.py", f"--checkpoint={checkpoint}", "--architecture=densenet121", f"--out={out}", expect=0)
    return module, out


@pytest.mark.slow
def test_an_imported_densenet_explains_and_exports(tmp_path, records_dir):
    """--checkpoint of --mode=explain and --mode=export takes the imported file; the export's
    predict_images serves PyTorch's eval probabilities."""
    import tensorflow as tf

    module, out = imported_densenet(tmp_path, seed=5)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"stage": "baseline", "data": {"records_dir": str(records_dir)}}))
    concurrently(  # explain writes into the run, export into export_dir: one does not wait for the other
        lambda: tfcxr_main("--mode=explain", f"--model_dir={run}", f"--checkpoint={out}", "--num_images=2", "--top_k=1"),
        lambda: tfcxr_main("--mode=export", f"--model_dir={run}", f"--checkpoint={out}",
                           f"--export_dir={tmp_path / 'export'}"))
    assert len(list((run / "explain").glob("*.png"))) == 2
    served = tf.saved_model.load(str(tmp_path / "export" / "tfcxr_d121" / "1"))
    images = gray_images(count=2, side=64, seed=6)
    probabilities = served.signatures["predict_images"](images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-torch_eval(module, images))), atol=1e-5)


@pytest.mark.real
@pytest.mark.slow
def test_evaluation_of_an_imported_densenet_is_pytorch_eval_on_real_radiographs(real_dir, tmp_path):
    """--mode=evaluate --checkpoint=<imported> on the 17 held-out real radiographs (the whole-image
    resize protocol: image/small as the sharder made it, resized to 256): each probability is
    PyTorch's eval on the same pixels, read by the project's own pipeline."""
    import pandas as pd

    from helpers import benchmark
    from tfcxr.config import RunConfig
    from tfcxr.data import pipeline
    from tfcxr.stages import STAGES

    real_cxr14 = benchmark("real_cxr14")
    records = real_cxr14.ensure_records(real_dir=real_dir)  # shards once into workspace/, reused afterwards
    module, out = imported_densenet(tmp_path, seed=7)
    run = tmp_path / "run"
    tfcxr_main("--stage=baseline", "--mode=evaluate", f"--records_dir={real_cxr14.RECORDS_DIR}", f"--model_dir={run}",
               f"--checkpoint={out}", "--split=test", "--batch_size=4", "--resamples=10")
    predictions = pd.read_csv(run / "eval" / "test" / "predictions.csv").set_index("filename")
    assert len(predictions) == records["splits"]["test"]["written"] == 17
    assert predictions["protocol"].iloc[0] == "resize: one 256x256 resize of the whole image"

    inputs = STAGES["baseline"].task.input_spec(RunConfig(stage="baseline"))
    dataset = pipeline.make_dataset(real_cxr14.RECORDS_DIR, "test", inputs, 4, training=False, include_metadata=True)
    for batch in dataset:
        images = batch["image"].numpy()  # [B,256,256,1] in [0, 1], the pixels evaluation fed the model
        assert images.shape[1:] == (256, 256, 1) and images.std() > 0.05  # radiographs, not blanks
        expected = 1 / (1 + np.exp(-torch_eval(module, images)))
        names = [name.decode() for name in batch["filename"].numpy()]
        ours = predictions.loc[names, [f"prob_{label}" for label in LABELS]].to_numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-5)
