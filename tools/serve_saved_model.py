"""Serve an exported SavedModel over TF Serving's REST API with the stand-in (no TF Serving binary needed).

    python tools/serve_saved_model.py --saved_model=workspace/exports/tfcxr_aecnn/1 [--port=8501]
        [--max_request_bytes=33554432]

Answers POST /v1/models/<model_name>[/versions/<version>]:predict and GET /v1/models/<model_name>
by TF Serving's documented REST rules (tfcxr/export/rest.py), so clients, curl commands and
tools/serving_client.py can be tried before deploying: both request formats, {"b64": ...} bytes,
{"error": ...} bodies with TF Serving's HTTP statuses, and bodies over --max_request_bytes
refused (413) from their Content-Length, unread. Ctrl-C stops it.
"""

import sys

import tfcxr.quiet  # noqa: F401  (first: TensorFlow starts without its start-up noise; -v shows it)
from absl import app, flags

from tfcxr.export import rest

flags.DEFINE_string("saved_model", None, "DIR/<model_name>/<version> written by --mode=export.", required=True)
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 8501, "Port (TF Serving's REST default; 0: any free port).")
flags.DEFINE_integer("max_request_bytes", rest.MAX_REQUEST_BYTES, "Longer request bodies are refused (HTTP 413) "
                     "before they are read.", lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        server = rest.make_server(FLAGS.saved_model, FLAGS.host, FLAGS.port, FLAGS.max_request_bytes)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot listen on {FLAGS.host}:{FLAGS.port} ({error.strerror})")
    print(f"serving {FLAGS.saved_model} at {rest.model_url(server)}:predict (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    app.run(main)
