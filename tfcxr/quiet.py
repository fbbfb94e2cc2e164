"""TensorFlow without its start-up noise: `import tfcxr.quiet` first in every entry point.

TensorFlow 2.21 writes its start-up lines from C++ before absl logging is set up, so
TF_CPP_MIN_LOG_LEVEL does not hide them: absl's "All log messages before absl::InitializeLog()",
the oneDNN notice, "Could not find cuda drivers", the CPU-instructions notice and, on a machine
without a GPU, "failed call to cuInit" (an E line that is no error there). Importing this
module imports TensorFlow and lists its devices (the cuInit call) with the process's stderr
(file descriptor 2) sent to a temporary file, then writes back every line that is not one of
those: a real error, a Python warning or a traceback still shows. Later C++ INFO lines are
hidden by TF_CPP_MIN_LOG_LEVEL=1 (set unless already set).

Verbose: TF_CPP_MIN_LOG_LEVEL=0 in the environment, or -v / --verbosity on the command line
(absl's flag), keeps every line; -v also sets TF_CPP_MIN_LOG_LEVEL=0 for child processes.
"""

import contextlib
import os
import re
import sys
import tempfile

NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"cpu_feature_guard\.cc.*This TensorFlow binary is optimized",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags",
    r"failed call to cuInit",
]))


def verbose(argv, environ):
    """True when the user asked for TensorFlow's own lines: -v / --verbosity, or TF_CPP_MIN_LOG_LEVEL=0."""
    asked = any(arg == "-v" or arg.startswith(("-v=", "--verbosity")) for arg in argv[1:])
    return asked or environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"


@contextlib.contextmanager
def stderr_without(pattern):
    """Captures file descriptor 2 (C++ and Python alike) and writes back the lines not matching `pattern`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not pattern.search(line)))
            sys.stderr.flush()


def start_tensorflow(argv=sys.argv, environ=os.environ):
    """Imports TensorFlow and initialises its devices, quietly unless verbose (see the module docstring)."""
    if verbose(argv, environ):
        environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        filtered = contextlib.nullcontext()
    else:
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        filtered = stderr_without(NOISE)
    with filtered:
        import tensorflow as tf

        tf.config.list_physical_devices()


start_tensorflow()
