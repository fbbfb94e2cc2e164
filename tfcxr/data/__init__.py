"""Records, splits and input pipelines for ChestX-ray14.

The public entry point is `tfcxr.data.make_dataset(records_dir, split, stage, batch_size, training,
...)` (tfcxr/data/pipeline.py). It is imported on first use, so the TensorFlow-free modules
(synthetic, metadata) stay light for the data tools and their worker processes.
"""

__all__ = ["make_dataset"]


def __getattr__(name):
    if name == "make_dataset":
        from tfcxr.data.pipeline import make_dataset

        return make_dataset
    raise AttributeError(f"module 'tfcxr.data' has no attribute {name!r}")
