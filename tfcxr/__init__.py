"""tfcxr: AECNN (learned compression + classification of ChestX-ray14) in TensorFlow / Keras 3."""

__version__ = "0.1.0"
