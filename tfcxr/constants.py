"""Every constant of the method, in one place.

Numbers come from ../shared/SPEC.md ("The method, exactly") and the reproduction report's
Table 1. Nothing else in the package spells them out again.
"""

# The 14 ChestX-ray14 labels, in Table 1 order (the order of every label vector we write).
LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NUM_LABELS = len(LABELS)
NO_FINDING = "No Finding"

# ImageNet normalization (torchvision / keras.applications "torch" mode).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Image geometry of the paper.
ORIGINAL_SIZE = 1024  # ChestX-ray14 PNGs
SMALL_SIZE = 256  # stage 1 resize (stored as image/small in the records)
STAGE1_CROP = 224  # stage 1 random crop
STAGE2_PATCH = 128  # stage 2 random patch; stage 2 validation resize
STAGE3_CROP = 896  # stage 3 random crop; stage 3 validation resize
COMPRESSION = 4  # encoder stride / PixelShuffle factor, per side
LATENT_LEVELS = 255.0  # an 8-bit PNG stores the [0, 1] latent as k / 255
# Stage 2 training cuts this many random patches from each decoded original (the decode is the cost).
PATCHES_PER_IMAGE = 16

# Largest user image decoded (serving, tools, sharder), read from its header BEFORE decoding.
# ChestX-ray14 is 1024 a side, clinical detectors ~4,300: 2x headroom, 100x below a decompression bomb.
MAX_IMAGE_SIDE = 8192  # pixels, width or height
MAX_IMAGE_PIXELS = 40_000_000  # width * height (40 megapixels)

# Augmentation of the paper.
ROTATION_DEGREES = 5.0  # RandomRotation(5), fill black
CONTRAST = 0.25  # ColorJitter(contrast=0.25): factor in [0.75, 1.25]
FMIX_DECAY_POWER = 3.0  # FMix: decay power of the Fourier noise
FMIX_ALPHA = 1.0  # FMix: mixing ratio ~ Beta(alpha, alpha)

# Optimisation of the paper (every stage).
LEARNING_RATE = 1e-4  # Adam, default betas
EPOCHS = 20
PLATEAU_FACTOR = 0.1  # ReduceLROnPlateau on validation loss
PLATEAU_PATIENCE = 5  # PyTorch's count: the rate drops when bad epochs > patience
PLATEAU_THRESHOLD = 1e-4  # PyTorch's default, RELATIVE (threshold_mode="rel"): better = loss < best * (1 - 1e-4)
LR_SCHEDULES = ("plateau", "cosine")  # --lr_schedule: the reference's plateau cuts, or a cosine decay to 0 over the run
ADAM_EPSILON = 1e-8  # PyTorch's Adam default (Keras's is 1e-7)
CLASSIFICATION_WEIGHT = 0.9  # stage 3: L = 0.9 * BCE + 0.1 * MSE

# Evaluation: patient-level bootstrap resamples of the ROC-AUC confidence intervals.
BOOTSTRAP_RESAMPLES = 1000

# Validation split carved patient-wise out of train_val.
VAL_IMAGES = 10_000
TRAIN_VAL_IMAGES = 86_524  # official train_val_list.txt
TEST_IMAGES = 25_596  # official test_list.txt

# Table 1 of the reproduction report: per-label test ROC-AUC.
# Columns: D121 (original paper), D121 (reproduction), AECNN (paper), AECNN (reproduction), FMix.
TABLE1_COLUMNS = ("D121 (paper)", "D121 (repro)", "AECNN (paper)", "AECNN (repro)", "FMix (repro)")
TABLE1 = {
    "Atelectasis": (0.7829, 0.786, 0.7848, 0.7844, 0.7810),
    "Cardiomegaly": (0.8941, 0.8811, 0.8951, 0.9006, 0.8593),
    "Consolidation": (0.7565, 0.7545, 0.7584, 0.7514, 0.7481),
    "Edema": (0.8518, 0.8583, 0.8506, 0.8586, 0.8533),
    "Effusion": (0.8340, 0.8387, 0.8367, 0.8354, 0.8326),
    "Emphysema": (0.9271, 0.9242, 0.9205, 0.9206, 0.9229),
    "Fibrosis": (0.8340, 0.8314, 0.8389, 0.8458, 0.8283),
    "Hernia": (0.9117, 0.9055, 0.9178, 0.9105, 0.9220),
    "Infiltration": (0.7044, 0.7064, 0.7050, 0.7027, 0.7000),
    "Mass": (0.8366, 0.8358, 0.8390, 0.8305, 0.8164),
    "Nodule": (0.7771, 0.7772, 0.7789, 0.7787, 0.7671),
    "Pleural_Thickening": (0.7855, 0.7895, 0.7847, 0.7910, 0.7806),
    "Pneumonia": (0.7434, 0.7381, 0.7459, 0.7343, 0.7147),
    "Pneumothorax": (0.8690, 0.8750, 0.8698, 0.8647, 0.8570),
    "Mean": (0.8220, 0.8216, 0.8226, 0.8221, 0.8131),
}
