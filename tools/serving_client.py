"""Query a TF Serving REST endpoint with PNG / JPEG files; print the 14 probabilities.

    python tools/serving_client.py --url=http://localhost:8501/v1/models/tfcxr_aecnn:predict a.png b.png

Sends {"instances": [{"b64": "<base64 file bytes>"}, ...]} (TF Serving's row format for the
`image_bytes` input of serving_default) and prints one row per label, one column per file.
Standard library only, so it runs wherever Python does.
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path


def request_body(paths):
    """The REST request of TF Serving's predict API for these image files."""
    instances = [{"b64": base64.b64encode(Path(path).read_bytes()).decode("ascii")} for path in paths]
    return json.dumps({"instances": instances}).encode()


def predict(url, paths, timeout=60):
    """POSTs the files; returns the response's "predictions" (one dict per file)."""
    request = urllib.request.Request(url, data=request_body(paths), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["predictions"]


def table(paths, predictions):
    """Labels down, files across, probabilities to 4 places."""
    labels = predictions[0]["labels"]
    names = [Path(path).name for path in paths]
    width = max(len(label) for label in labels)
    lines = [" " * width + "  " + "  ".join(f"{name:>16.16}" for name in names)]
    for k, label in enumerate(labels):
        lines.append(f"{label:<{width}}  " + "  ".join(f"{p['probabilities'][k]:>16.4f}" for p in predictions))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://HOST:8501/v1/models/MODEL_NAME:predict")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the server")
    parser.add_argument("files", nargs="+", help="PNG or JPEG files")
    args = parser.parse_args()
    for path in args.files:
        if not Path(path).is_file():
            sys.exit(f"{path}: no such file")
    try:
        predictions = predict(args.url, args.files, args.timeout)
    except urllib.error.HTTPError as error:
        sys.exit(f"{args.url}: HTTP {error.code}: {error.read().decode(errors='replace').strip()}")
    except (urllib.error.URLError, OSError) as error:
        sys.exit(f"{args.url}: cannot reach the server ({getattr(error, 'reason', error)})")
    print(table(args.files, predictions))


if __name__ == "__main__":
    main()
