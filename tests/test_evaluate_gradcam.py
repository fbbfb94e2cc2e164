"""Grad-CAM (tfcxr.evaluate.gradcam): exact on a CAM-able model, lights up planted findings."""

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from keras import layers
from PIL import Image

from tfcxr import models
from tfcxr.constants import LABELS
from tfcxr.data import synthetic
from tfcxr.evaluate import gradcam
from tiny_models import tiny_aecnn, tiny_baseline

SIZE = 64  # side of the generated radiographs (planted boxes are 10-14% of it)


def test_gradcam_of_a_pooled_linear_head_is_the_class_activation_map():
    """With global average pooling + Dense, Grad-CAM's weights are the Dense kernel / (h * w)."""
    baseline = tiny_baseline()
    images = tf.random.uniform([2, 32, 32, 1], seed=3)
    classes = tf.constant([[0, 5], [13, 2]])
    heatmaps, probabilities = gradcam.gradcam(gradcam.cam_model(baseline), images, classes)
    assert heatmaps.shape == (2, 2, 32, 32) and probabilities.shape == (2, len(LABELS))
    classifier = baseline.get_layer("classifier")
    features = keras.Model(classifier.inputs, classifier.get_layer(models.FEATURE_LAYER).output)(
        baseline.get_layer("imagenet_normalization")(images))  # [2, 8, 8, 16]
    kernel = classifier.get_layer("logits").kernel.numpy()  # [16, 14]
    for b in range(2):
        for k, label in enumerate(classes.numpy()[b]):
            cam = np.maximum(np.einsum("hwc,c->hw", features[b], kernel[:, label]), 0)
            cam = tf.image.resize(cam[None, ..., None], [32, 32]).numpy()[0, ..., 0]
            np.testing.assert_allclose(heatmaps[b, k], cam / cam.max(), atol=1e-5)
    np.testing.assert_allclose(probabilities, tf.sigmoid(baseline(images)["logits"]), atol=1e-6)


def test_gradcam_of_an_aecnn_covers_the_input_image():
    aecnn = tiny_aecnn()
    cam = gradcam.cam_model(aecnn)
    features, logits = cam(tf.zeros([1, 64, 64, 1]))
    assert features.shape == (1, 4, 4, 16)  # latent 16x16, then the classifier's stride 4
    np.testing.assert_allclose(logits, aecnn(tf.zeros([1, 64, 64, 1]))["logits"], atol=1e-6)
    heatmaps, _ = gradcam.gradcam(cam, tf.random.uniform([1, 64, 64, 1], seed=4), tf.constant([[1, 2, 3]]))
    assert heatmaps.shape == (1, 3, 64, 64) and 0 <= heatmaps.min() and heatmaps.max() <= 1


def test_mass_in_boxes():
    heatmap = np.zeros((10, 10))
    heatmap[2:4, 2:4] = 1
    heatmap[8, 8] = 2
    assert gradcam.mass_in_boxes(heatmap, [(2, 2, 2, 2)]) == pytest.approx(4 / 6)
    assert gradcam.mass_in_boxes(heatmap, [(2, 2, 2, 2), (8, 8, 1, 1)]) == pytest.approx(1)
    assert gradcam.box_mask(heatmap.shape, [(2, 2, 2, 2)]).mean() == pytest.approx(0.04)
    assert np.isnan(gradcam.mass_in_boxes(np.zeros((4, 4)), [(0, 0, 2, 2)]))


def test_read_boxes_of_the_real_bbox_list(real_dir):
    boxes = gradcam.read_boxes(real_dir / "metadata" / "BBox_List_2017.csv")
    assert len(boxes) == 880 and sum(map(len, boxes.values())) == 984
    labels = {box[0] for image_boxes in boxes.values() for box in image_boxes}
    assert "Infiltration" in labels and labels <= set(LABELS)  # "Infiltrate" in the file
    label, x, y, w, h = boxes["00001369_000.png"][0]
    assert label == "Cardiomegaly" and (x, y, w, h) == pytest.approx((337.0, 276.3, 553.7, 386.8), abs=0.1)


def small_cnn():
    """A CNN that learns the planted patterns in seconds; its last activation is models.FEATURE_LAYER."""
    image = keras.Input(shape=(None, None, 3), name="image")
    x = image
    for filters in (8, 16):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D()(layers.ReLU()(layers.BatchNormalization()(x)))  # [B,H/2,W/2,f]
    features = layers.ReLU(name=models.FEATURE_LAYER)(layers.Conv2D(16, 3, padding="same")(x))  # [B,H/4,W/4,16]
    logits = layers.Dense(len(LABELS), name="logits")(layers.GlobalAveragePooling2D()(features))
    return keras.Model(image, logits, name="classifier")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A generated tree (150 patients, 64 px): images, their labels and planted boxes."""
    tree = synthetic.generate(tmp_path_factory.mktemp("planted") / "cxr14", num_patients=150, image_size=SIZE,
                              layout="nih", seed=0)
    entries = pd.read_csv(tree / "Data_Entry_2017.csv", usecols=[0, 1], names=["image", "labels"], header=0)
    images = gradcam.file_images([tree / "images" / name for name in entries["image"]], SIZE)
    labels = np.array([[label in found.split("|") for label in LABELS] for found in entries["labels"]], np.float32)
    return images, labels, gradcam.read_boxes(tree / "BBox_List_2017.csv")


@pytest.fixture(scope="module")
def trained(planted):
    """The D121 BL5 baseline wrapper around small_cnn, trained briefly on the planted findings."""
    images, labels, _ = planted
    keras.utils.set_random_seed(0)
    baseline = models.build_baseline(small_cnn())
    logits = keras.Model(baseline.inputs, baseline.output["logits"])
    logits.compile(keras.optimizers.Adam(3e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    history = logits.fit(np.stack([image for _, image, _ in images]), labels, batch_size=16, epochs=20, verbose=0)
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]
    return baseline


@pytest.mark.slow
def test_heatmaps_light_up_the_planted_findings(planted, trained):
    images, _, boxes = planted
    planted_boxes = [(image, LABELS.index(label), (x * SIZE / width, y * SIZE / height, w * SIZE / width, h * SIZE / height))
                     for name, image, (height, width) in images for label, x, y, w, h in boxes.get(name, [])]
    assert len(planted_boxes) > 200
    cam = gradcam.cam_model(trained)
    masses, fractions = [], []
    for start in range(0, len(planted_boxes), 64):
        chunk = planted_boxes[start:start + 64]
        heatmaps, _ = gradcam.gradcam(cam, np.stack([c[0] for c in chunk]), tf.constant([[c[1]] for c in chunk]))
        for heatmap, (_, _, box) in zip(heatmaps[:, 0], chunk):
            masses.append(np.nan_to_num(gradcam.mass_in_boxes(heatmap, [box])))  # an empty map counts 0
            fractions.append(gradcam.box_mask(heatmap.shape, [box]).mean())
    # The boxes hold about 1.5% of the image; a model that learned the findings puts several times that share of its heat there.
    assert np.mean(masses) > 4 * np.mean(fractions), (np.mean(masses), np.mean(fractions))


@pytest.mark.slow
def test_explain_writes_overlays_and_the_heat_inside_the_boxes(planted, trained, tmp_path):
    images, _, boxes = planted
    chosen = [image for image in images if image[0] in boxes][:3]
    rows = gradcam.explain(trained, chosen, tmp_path, top_k=3, boxes=boxes)
    table = pd.read_csv(tmp_path / "explain" / "explain.csv")
    assert len(table) == len(rows) == 9 and list(table["rank"]) == [1, 2, 3] * 3
    for name, _, _ in chosen:
        assert Image.open(tmp_path / "explain" / name).size[0] > 400  # the image and three panels
        found = table[table["image"] == name]
        assert found["probability"].is_monotonic_decreasing
        boxed = {box[0] for box in boxes[name]}
        assert found["mass_in_box"].notna().tolist() == [label in boxed for label in found["label"]]
