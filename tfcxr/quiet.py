"""TensorFlow without its start-up noise: `import tfcxr.quiet` first in every entry point.

TensorFlow 2.21 writes its start-up lines from C++ before absl logging is set up, so
TF_CPP_MIN_LOG_LEVEL does not hide them: absl's "All log messages before absl::InitializeLog()",
the oneDNN notice, "Could not find cuda drivers", the CPU-instructions notice and, on a machine
without a GPU, "failed call to cuInit" (an E line that is no error there). Importing this
module imports TensorFlow and lists its devices (the cuInit call) with the process's stderr
(file descriptor 2) passed through a filter that drops exactly those lines: a real error, a
Python warning, a traceback, even the last words of a crash still show. Later C++ INFO lines
are hidden by TF_CPP_MIN_LOG_LEVEL=1 (set unless already set).

Verbose: TF_CPP_MIN_LOG_LEVEL=0 in the environment, or -v / --verbosity on the command line
(absl's flag), keeps every line; -v also sets TF_CPP_MIN_LOG_LEVEL=0 for child processes.
"""

import contextlib
import os
import re
import sys

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
    """Sends file descriptor 2 (C++ and Python alike) through a filter that drops the lines matching `pattern`.

    The filter is a forked process reading a pipe, so whatever is printed before a crash (an
    abort in TensorFlow's C++ start-up) still reaches the console.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the filter: every line not matching, as it comes, until the last writer closes
        os.close(write_end)
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not pattern.search(line.decode(errors="replace")):
                    os.write(saved, line)
        os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes this process's last write end of the pipe: the filter ends
        os.close(saved)
        os.waitpid(child, 0)


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
