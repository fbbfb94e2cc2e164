"""tfcxr.quiet: the entry points start TensorFlow without its start-up noise; -v / TF_CPP_MIN_LOG_LEVEL=0 bring it back."""

import importlib
import os
import subprocess
import sys

import pytest

from helpers import ROOT

STARTUP_LINES = ("I0000 00:00:1796024936.775055   18736 port.cc:153] oneDNN custom operations are on. You may see ...",
                 "E0000 00:00:1796024952.721528   18736 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
                 "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")


@pytest.fixture(scope="module")
def quiet():
    """tfcxr.quiet imported as an entry point imports it (no -v), this process's environment left as it was."""
    before = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["pytest"])  # pytest's own -v is not the tools' -v
        module = importlib.import_module("tfcxr.quiet")
    if before is None:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = before
    return module


def test_stderr_without_drops_only_the_startup_lines(quiet, capfd):
    with quiet.stderr_without(quiet.NOISE):
        os.write(2, ("\n".join(STARTUP_LINES) + "\nE0000 real_op.cc:12] a real error\n").encode())
        os.write(2, b"UserWarning: a Python warning\n")
    assert capfd.readouterr().err == "E0000 real_op.cc:12] a real error\nUserWarning: a Python warning\n"


def test_verbose_on_minus_v_or_level_0(quiet):
    assert quiet.verbose(["tool", "-v", "1"], {}) and quiet.verbose(["tool", "--verbosity=1"], {})
    assert quiet.verbose(["tool"], {"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert not quiet.verbose(["tool", "--values=1"], {"TF_CPP_MIN_LOG_LEVEL": "1"})


@pytest.mark.slow
def test_a_tool_prints_its_error_without_tensorflow_noise(tmp_path):
    """tools/compare_runs.py on a missing run: one line; with TF_CPP_MIN_LOG_LEVEL=0 TensorFlow's lines are back;
    a crash inside the filter still prints what came before it."""
    environ = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    tool = [sys.executable, str(ROOT / "tools" / "compare_runs.py"), str(tmp_path / "missing"), "--split=test"]
    bare = [sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"]
    crash = [sys.executable, "-c", "import os; from tfcxr import quiet\nwith quiet.stderr_without(quiet.NOISE):\n"
             "    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on\\nF0000 a fatal check failed\\n')\n"
             "    os.abort()"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for command, env in ((tool, environ), (tool, {**environ, "TF_CPP_MIN_LOG_LEVEL": "0"}), (bare, environ),
                                 (crash, environ))]
    (quiet_rc, quiet_err), (verbose_rc, verbose_err), (_, bare_err), (crash_rc, crash_err) = [
        (run.wait(timeout=600), run.communicate()[1]) for run in runs]
    assert crash_rc != 0 and crash_err == "F0000 a fatal check failed\n"  # a crash's last words still show
    error = f"{tmp_path / 'missing'}/eval/test/auc.json: not found; run python -m tfcxr.main --mode=evaluate --split=test first"
    assert quiet_rc == 1 and quiet_err.strip() == error  # the real error, alone
    assert verbose_rc == 1 and error in verbose_err
    for noise in ("cuInit", "oneDNN"):
        if noise in bare_err:  # this machine's TensorFlow prints it: the verbose run must show it too
            assert noise in verbose_err
