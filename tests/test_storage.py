"""tfcxr.storage: local and URL paths, atomic writes, the records' manifest, [0, 1] floats as 8 bits."""

import hashlib
import json
import os
import stat

import numpy as np
import pytest
import tensorflow as tf

from tfcxr import storage as io
from tfcxr.models import compression


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "auc.json"
    io.write_json(path, {"auc": 0.75})
    for value in ({"auc": float("nan")}, {"auc": object()}):  # json refuses both
        with pytest.raises((ValueError, TypeError)):
            io.write_json(path, value)
    with pytest.raises(TypeError):
        io.write_bytes(path, "text, not bytes")  # fails after the temporary exists
    assert json.loads(path.read_text()) == {"auc": 0.75}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auc.json"]


def test_atomic_path_renames_only_a_finished_file(tmp_path):
    path = tmp_path / "deep" / "shard.tfrecord"
    with pytest.raises(RuntimeError):
        with io.atomic_path(path) as temporary:
            temporary.write_bytes(b"half a shard")
            assert temporary.name.startswith(".shard.tfrecord.") and temporary.name.endswith(io.TEMPORARY_SUFFIX)
            raise RuntimeError("killed")
    assert list(path.parent.iterdir()) == []
    with io.atomic_path(path, suffix=".partial.keras") as temporary:
        assert not path.exists() and temporary.name.endswith(".partial.keras")
        temporary.write_bytes(b"whole")
    assert path.read_bytes() == b"whole" and list(path.parent.iterdir()) == [path]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "models" / "1"
    with pytest.raises(RuntimeError):
        with io.atomic_directory(target) as folder:
            (folder / "saved_model.pb").write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(target.parent.iterdir()) == []
    with io.atomic_directory(target) as folder:
        assert folder.name.startswith(".")  # TF Serving loads numeric folders only
        (folder / "saved_model.pb").write_bytes(b"whole")
    assert [p.name for p in target.parent.iterdir()] == ["1"] and (target / "saved_model.pb").read_bytes() == b"whole"


def test_read_manifest_names_the_path_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        io.read_manifest(tmp_path / "nowhere")
    assert str(missing.value) == (f"{tmp_path / 'nowhere' / 'manifest.json'}: no manifest.json; "
                                  "shard the data with tools/shard_cxr14.py")
    (tmp_path / io.MANIFEST).write_text('{"splits": ')  # cut short
    with pytest.raises(ValueError) as broken:
        io.read_manifest(tmp_path)
    assert str(broken.value).startswith(f"{tmp_path / 'manifest.json'}: not a readable manifest.json (")
    assert "\n" not in str(broken.value)
    (tmp_path / io.MANIFEST).write_text('{"small_size": 64}')
    assert io.read_manifest(tmp_path) == {"small_size": 64}


def test_the_schema_names_the_same_manifest():
    from tfcxr.data import schema

    assert schema.MANIFEST == io.MANIFEST == "manifest.json"


def test_to_uint8_rounds_clipped_values_as_the_tensor_version():
    values = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.2, 0.5, 254.5 / 255, 1.0, 1.7], np.float32)
    expected = np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(io.to_uint8(values), expected)
    np.testing.assert_array_equal(compression.to_uint8(tf.constant(values)).numpy(), expected)
    np.testing.assert_array_equal(compression.quantize(tf.constant(values)).numpy(), expected / np.float32(255))
    assert io.to_uint8(values).dtype == np.uint8


def test_urls_keep_their_double_slash_and_write_atomically_through_gfile():
    """ram:// is TensorFlow's in-memory filesystem: the same gfile code path as gs://."""
    base = "ram://storage_test/run"
    assert io.join(base, "eval", "test") == "ram://storage_test/run/eval/test"
    assert io.parent(io.join(base, "a.json")) == base and io.name(io.join(base, "a.json")) == "a.json"
    io.write_json(io.join(base, "eval", "auc.json"), {"auc": 0.75})
    with pytest.raises(ValueError):
        io.write_json(io.join(base, "eval", "auc.json"), {"auc": float("nan")})
    with pytest.raises(RuntimeError):
        with io.atomic_path(io.join(base, "shard.tfrecord")) as temporary:
            assert isinstance(temporary, str) and temporary.startswith(base + "/.shard.tfrecord.")
            with tf.io.gfile.GFile(temporary, "wb") as file:
                file.write(b"half")
            raise RuntimeError("killed")
    assert json.loads(io.read_text(io.join(base, "eval", "auc.json"))) == {"auc": 0.75}
    assert io.glob(io.join(base, "*")) == [io.join(base, "eval")] and io.temporaries(base) == []
    assert io.isfile(io.join(base, "eval", "auc.json")) and not io.isfile(io.join(base, "eval"))
    assert io.sha256(io.join(base, "eval", "auc.json")) == hashlib.sha256(b'{\n  "auc": 0.75\n}\n').hexdigest()
    with pytest.raises(FileNotFoundError, match="ram://storage_test/run/none.json: not found"):
        io.read_bytes(io.join(base, "none.json"))


def test_atomic_directory_in_a_bucket_appears_with_all_its_files(tmp_path):
    target = "ram://storage_test/models/1"
    with io.atomic_directory(target) as folder:
        assert io.name(folder).startswith(".1.")
        io.write_bytes(io.join(folder, "variables", "variables.index"), b"index")
        io.write_bytes(io.join(folder, "saved_model.pb"), b"graph")
    assert io.read_bytes(io.join(target, "variables", "variables.index")) == b"index"
    assert [io.name(p) for p in io.glob("ram://storage_test/models/*") if io.glob(io.join(p, "*"))] == ["1"]
    assert not (tmp_path / "ram:").exists() and not os.path.exists("ram:")
