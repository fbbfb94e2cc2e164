"""--mode=explain: Grad-CAM heatmaps of the top findings, over the image the model sees.

Grad-CAM (Selvaraju et al. 2017) on the classifier's last convolutional activation
(its backbone's `features` layer, models.BACKBONES: DenseNet121's final "relu" before pooling): each feature map is weighted by
the spatial mean of the gradient of a finding's logit, summed, passed through ReLU and
upsampled to the input image. For an AECNN the features are those of the latent image, which
is aligned with the input, so the heatmap is drawn over the input image all the same.

Overlays are written to model_dir/explain/<image>.png (the image, then one panel per top
finding), with the boxes of BBox_List_2017.csv where the image has one, and explain.csv
(per image and finding: probability, and the share of the heatmap inside the finding's box).
"""

from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfcxr.constants import LABELS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE  # noqa: E402
from tfcxr.data import pipeline, schema  # noqa: E402
from tfcxr.data.image_limits import read_gray  # noqa: E402
from tfcxr import storage  # noqa: E402
from tfcxr.storage import save_figure, write_text  # noqa: E402
from tfcxr.models import CLASSIFIER, ENCODER, NORMALIZATION, backbone_of, compresses  # noqa: E402

BBOX_SPELLING = {"Infiltrate": "Infiltration"}  # BBox_List_2017.csv's name -> ours


def cam_model(model):
    """Baseline or AECNN -> keras.Model: gray image [B,H,W,1] -> (features [B,h,w,C], logits [B,L])."""
    classifier = model.get_layer(CLASSIFIER)
    features = classifier.get_layer(backbone_of(model).features).output  # [B,h,w,C]
    head = keras.Model(classifier.inputs, [features, classifier.outputs[0]])
    image = keras.Input(shape=(None, None, 1), name="image")
    seen = model.get_layer(ENCODER)(image) if compresses(model) else image
    features, logits = head(model.get_layer(NORMALIZATION)(seen))
    return keras.Model(image, [features, logits], name="gradcam")


def gradcam(model, images, classes):
    """Heatmaps of `classes` [B, K] (label indices) on images [B,H,W,1].

    model: a cam_model. Returns (heatmaps [B, K, H, W] in [0, 1], each scaled to its maximum;
    probabilities [B, 14]).
    """
    with tf.GradientTape(persistent=True) as tape:
        features, logits = model(images, training=False)  # [B,h,w,C], [B,14]
        chosen = tf.gather(tf.cast(logits, tf.float32), classes, batch_dims=1)  # [B,K]
        targets = [tf.reduce_sum(chosen[:, k]) for k in range(classes.shape[1])]  # images are independent
    maps = []
    for target in targets:
        weights = tf.reduce_mean(tape.gradient(target, features), axis=[1, 2])  # [B,C]
        maps.append(tf.nn.relu(tf.einsum("bhwc,bc->bhw", tf.cast(features, tf.float32), weights)))  # [B,h,w]
    del tape
    heatmaps = tf.image.resize(tf.stack(maps, axis=-1), tf.shape(images)[1:3])  # [B,H,W,K]
    heatmaps = heatmaps / (tf.reduce_max(heatmaps, axis=[1, 2], keepdims=True) + 1e-12)
    return tf.transpose(heatmaps, [0, 3, 1, 2]).numpy(), tf.sigmoid(tf.cast(logits, tf.float32)).numpy()


def box_mask(shape, boxes):
    """bool [H, W]: pixels inside any of the boxes (x, y, w, h)."""
    mask = np.zeros(shape, bool)
    for x, y, w, h in boxes:
        mask[max(int(round(y)), 0):int(round(y + h)), max(int(round(x)), 0):int(round(x + w))] = True
    return mask


def mass_in_boxes(heatmap, boxes):
    """Share of the heatmap [H, W] inside the boxes (NaN for an all-zero heatmap)."""
    total = heatmap.sum()
    return float(heatmap[box_mask(heatmap.shape, boxes)].sum() / total) if total > 0 else float("nan")


def read_boxes(path):
    """BBox_List_2017.csv -> {image name: [(label, x, y, w, h), ...]} ("Infiltrate" read as Infiltration).

    Its header "Image Index,Finding Label,Bbox [x,y,w,h],,," splits the box over four columns.
    """
    table = pd.read_csv(path, header=0, usecols=range(6), names=["image", "label", "x", "y", "w", "h"])
    table["label"] = table["label"].replace(BBOX_SPELLING)
    unknown = sorted(set(table["label"]) - set(LABELS))
    if unknown:
        raise ValueError(f"{path}: unknown finding labels {unknown}")
    boxes = {}
    for row in table.itertuples():
        boxes.setdefault(row.image, []).append((row.label, row.x, row.y, row.w, row.h))
    return boxes


def file_images(paths, size, max_side=MAX_IMAGE_SIDE, max_pixels=MAX_IMAGE_PIXELS):
    """Image files (any PNG / JPEG) -> [(name, image float [size, size, 1], (height, width))].

    image_limits.ImageFileError for a file that is not an image, or whose header declares more than the limits.
    """
    images = []
    for path in paths:
        pixels = read_gray(path, max_side, max_pixels)  # uint8 [H, W, 1]
        image = pipeline.to_float(pipeline.resize_uint8(pixels, size)).numpy()  # [size, size, 1]
        images.append((Path(path).name, image, pixels.shape[:2]))
    return images


def split_images(records_dir, split, inputs: pipeline.InputSpec, num_images):
    """The first `num_images` records of a split, as `inputs` evaluates them (inputs.eval_size)."""
    small, size = inputs.feature == schema.SMALL, inputs.eval_size
    keys = [inputs.feature, schema.FORMAT, schema.HEIGHT, schema.WIDTH, schema.FILENAME]
    records = tf.data.TFRecordDataset(pipeline.shard_files(records_dir, split)).take(num_images)
    images = []
    for record in records:
        example = schema.parse(record, keys)
        height, width = int(example[schema.HEIGHT]), int(example[schema.WIDTH])
        pixels = (tf.io.decode_png(example[schema.SMALL], channels=1) if small else
                  schema.decode_original(example[schema.ENCODED], example[schema.FORMAT], height, width))
        image = pipeline.to_float(pipeline.resize_uint8(pixels, size)).numpy()
        images.append((example[schema.FILENAME].numpy().decode(), image, (height, width)))
    return images


def overlay(image, heatmaps, findings, boxes):
    """Figure: the image with its boxes, then each heatmap over the image with the finding's name.

    image [S, S, 1]; heatmaps [K, S, S]; findings [(label, probability)]; boxes in image pixels.
    """
    figure, axes = plt.subplots(1, 1 + len(findings), figsize=(3.2 * (1 + len(findings)), 3.6))
    axes[0].set_title("image" + (" + boxes" if boxes else ""), fontsize=9)
    for ax, heatmap, (label, probability) in zip(axes[1:], heatmaps, findings):
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(f"{label} {probability:.3f}", fontsize=9)
    axes[0].imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    for ax in axes:
        for label, x, y, w, h in boxes:
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.2))
            ax.text(x, y - 2, label, color="lime", fontsize=7)
        ax.axis("off")
    return figure


def explain(model, images, model_dir, *, top_k=3, boxes=None, label_names=LABELS):
    """Grad-CAM of the top_k findings of each (name, image, (height, width)); returns explain.csv's rows.

    label_names: the model's labels in logit order (the records' manifest's).

    boxes: read_boxes() output; a box is drawn (scaled from the original's pixels to the
    image's) where the image has one, and the heatmap's share inside it is recorded.
    """
    cam = cam_model(model)
    out = storage.join(model_dir, "explain")
    rows = []
    for name, image, (height, width) in images:
        _, logits = cam(image[None], training=False)
        classes = tf.math.top_k(logits, top_k).indices  # [1, K]
        heatmaps, probabilities = gradcam(cam, image[None], classes)
        scale_x, scale_y = image.shape[1] / width, image.shape[0] / height
        scaled = [(label, x * scale_x, y * scale_y, w * scale_x, h * scale_y)
                  for label, x, y, w, h in (boxes or {}).get(name, [])]
        findings = [(label_names[k], float(probabilities[0, k])) for k in classes.numpy()[0]]
        for rank, ((label, probability), heatmap) in enumerate(zip(findings, heatmaps[0]), 1):
            own = [box[1:] for box in scaled if box[0] == label]  # this finding's boxes, if any
            rows.append({"image": name, "rank": rank, "label": label, "probability": probability,
                         "mass_in_box": mass_in_boxes(heatmap, own) if own else None,
                         "box_area_fraction": box_mask(heatmap.shape, own).mean() if own else None})
        figure = overlay(image, heatmaps[0], findings, scaled)
        save_figure(figure, storage.join(out, f"{Path(name).stem}.png"))
        plt.close(figure)
    write_text(storage.join(out, "explain.csv"), pd.DataFrame(rows).to_csv(index=False))
    return rows
