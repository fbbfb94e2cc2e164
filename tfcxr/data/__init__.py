"""Records, splits and input pipelines for ChestX-ray14.

The public entry point is `tfcxr.data.make_dataset(records_dir, split, inputs, batch_size, training,
...)` with an `InputSpec` describing what the model reads (tfcxr/data/pipeline.py). Both are
imported on first use, so the TensorFlow-free modules (synthetic, metadata) stay light for the
data tools and their worker processes.
"""

__all__ = ["InputSpec", "make_dataset"]


def __getattr__(name):
    if name in __all__:
        from tfcxr.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'tfcxr.data' has no attribute {name!r}")
