"""Where evaluation writes in a run: model_dir/eval/<split>[_<tta>]/ (a local path or a URL)."""

from tfcxr import storage


def eval_dir(model_dir, split: str, tta: str = "none") -> str:
    """model_dir/eval/<split>, or model_dir/eval/<split>_tencrop for the ten-crop protocol."""
    return storage.join(model_dir, "eval", split if tta == "none" else f"{split}_{tta}")
