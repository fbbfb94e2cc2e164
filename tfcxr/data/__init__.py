"""Records, splits and input pipelines for ChestX-ray14."""
