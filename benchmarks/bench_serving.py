"""Serving soak: one SavedModel, concurrent clients, real radiographs mixed with hostile bytes.

    .venv/bin/python benchmarks/bench_serving.py [--threads=4] [--rounds=12] [--image_size=224]
    .venv/bin/python benchmarks/bench_serving.py --rest  # the same over HTTP, tfcxr's REST stand-in
    .venv/bin/python benchmarks/bench_serving.py --url=http://HOST:8501/v1/models/tfcxr_aecnn:predict

Run from a snapshot of the code (`git archive HEAD`, PYTHONPATH=<snapshot>, TFCXR_REAL_DIR) when
others edit the working tree. The model: the demo-size AECNN (the real encoder, decoder and
DenseNet121, stage-3 evaluation size --image_size), UNTRAINED weights: the throughput and memory of
the real architecture; its probabilities mean nothing. It is exported with
tfcxr.export.saved_model.export and loaded once with tf.saved_model.load, as TF Serving loads it;
--rest serves that export through tfcxr/export/rest.py and --url drives an already running TF
Serving, both through tools/serving_client.py's HTTP path (no server memory is measured then).

Inputs: the 64 real radiographs of ../shared/cxr14-real/images (1024x1024 PNGs, 2 of them RGBA)
and 16 JPEGs made from them; bad: bytes that are no image, truncated PNG and JPEG, a PNG whose
header declares 20,000 x 20,000 (0.39 MB, a valid image), a JPEG header declaring 20,000 x 20,000.
--threads clients send --rounds requests each, of 1-8 images; one request in --bad_share carries
one bad item. Checks: every good request's probabilities equal those of its images sent one at
a time (no cross-talk between concurrent requests), and every request with a bad item is refused
with InvalidArgument (HTTP 400). In-process, then: requests of 1 and 4 20,000 x 20,000 PNGs with
the limit, and of --unlimited_counts (default 1) without it (the same model exported with no
limit): time and memory. 4 without the limit took the process to ~8 GB (OOM-killed once on a
shared 23 GB machine). Writes benchmarks/results/serving.md.
"""

import io
import json
import os
import re
import resource
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image

from tfcxr import models
from tfcxr.constants import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from tfcxr.data import image_limits
from tfcxr.export import rest, saved_model
from tfcxr.storage import write_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
import serving_client  # noqa: E402

REAL_IMAGES = Path(os.environ.get("TFCXR_REAL_DIR", ROOT.parent / "shared" / "cxr14-real")) / "images"  # as tests
BOMB_SIDE = 20_000
MAX_BATCH = 8
ATOL = 1e-6  # batched vs one at a time, float32 probabilities
FLAGS = flags.FLAGS


class Refused(Exception):
    """The server refused the request (InvalidArgument / HTTP 400); the message is its error."""


class InProcess:
    """serving_default of a SavedModel loaded once, called from any thread."""

    def __init__(self, path):
        self.loaded = tf.saved_model.load(str(path))  # keeps the signature's variables alive
        self.serve = self.loaded.signatures["serving_default"]

    def predict(self, items):
        """items: [(name, bytes, path)] -> float [B, 14]; Refused on InvalidArgument."""
        try:
            return self.serve(image_bytes=tf.constant([data for _, data, _ in items]))["probabilities"].numpy()
        except tf.errors.InvalidArgumentError as error:
            raise Refused(error.message) from None


class OverHttp:
    """TF Serving's REST predict API through tools/serving_client.py."""

    def __init__(self, url):
        self.url = url

    def predict(self, items):
        try:
            predictions = serving_client.predict(self.url, [path for _, _, path in items], timeout=600)
        except urllib.error.HTTPError as error:
            if error.code != 400:
                raise
            raise Refused(json.loads(error.read())["error"]) from None
        return np.array([prediction["probabilities"] for prediction in predictions], np.float32)


def reason(message):
    """The line of a TensorFlow error that says why (an assertion's, or the decoder's own)."""
    found = re.search(r"([^\n]+)\n\s*\[\[", message)  # the line above "[[{{node ...}}]]"
    return (found.group(1) if found else message.strip().splitlines()[0]).removeprefix("assertion failed: ")


class PeakRss:
    """Samples this process's resident memory every 5 ms: .peak (bytes) since the last reset()."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak, self.running = 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def rss(self):
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def reset(self):
        self.peak = self.rss()
        return self.peak


def encode(image, format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def make_inputs(folder):
    """-> (good, bad): [(name, bytes, path)], every item also written to `folder` for the HTTP client."""
    sources = sorted(REAL_IMAGES.glob("*.png"))
    if not sources:
        sys.exit(f"{REAL_IMAGES}: no radiographs (../shared/cxr14-real)")
    good = [(path.name, path.read_bytes()) for path in sources]
    for path in sources[:16]:
        with Image.open(path) as image:
            good.append((f"{path.stem}.jpg", encode(image.convert("L"), "JPEG", quality=90)))
    png, jpeg = good[0][1], good[-1][1]
    bad = [("not_an_image.png", b"this is not an image"), ("random_bytes.png", os.urandom(5000)),
           ("truncated.png", png[:len(png) // 2]), ("truncated.jpg", jpeg[:len(jpeg) // 2]),
           ("bomb_20000.png", image_limits.blank_png(BOMB_SIDE, BOMB_SIDE, 8)),
           ("bomb_20000.jpg", image_limits.jpeg_declaring(jpeg, BOMB_SIDE, BOMB_SIDE))]
    written = []
    for items in (good, bad):
        written.append([])
        for name, data in items:
            (folder / name).write_bytes(data)
            written[-1].append((name, data, folder / name))
    return written


def build_export(folder, image_size, **limits):
    keras_model = models.build_aecnn(models.build_encoder(), models.build_decoder(), models.build_classifier())
    return saved_model.export(keras_model, folder, image_size=image_size, model_name="tfcxr_aecnn", **limits)


def one_at_a_time(client, good):
    """Each good image alone -> (its probabilities [N, 14], latencies in s)."""
    probabilities, latencies = [], []
    for item in good:
        start = time.perf_counter()
        probabilities.append(client.predict([item])[0])
        latencies.append(time.perf_counter() - start)
    return np.stack(probabilities), latencies


def soak(client, good, bad, threads, rounds, bad_share, seed):
    """`threads` clients x `rounds` requests, started together -> (requests [dict], wall seconds)."""
    requests, barrier = [], threading.Barrier(threads + 1)

    def client_thread(number):
        rng, sent_bad = np.random.default_rng([seed, number]), 0
        barrier.wait()
        for _ in range(rounds):
            indices = rng.integers(0, len(good), rng.integers(1, MAX_BATCH + 1)).tolist()
            items = [good[i] for i in indices]
            bad_index = None
            if rng.random() < bad_share:  # the bad kinds in turn, so that each one is sent
                bad_index, sent_bad = (number + threads * sent_bad) % len(bad), sent_bad + 1
                items[rng.integers(len(items))] = bad[bad_index]
            start = time.perf_counter()
            try:
                result, error = client.predict(items), None
            except Refused as refused:
                result, error = None, reason(str(refused))
            requests.append({"indices": indices, "items": items, "bad": bad_index, "result": result, "error": error,
                             "latency": time.perf_counter() - start})

    workers = [threading.Thread(target=client_thread, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    return requests, time.perf_counter() - start


def check(requests, reference):
    """-> (max |batched - alone| over good requests, [problems])."""
    worst, problems = 0.0, []
    for request in requests:
        names = ", ".join(name for name, _, _ in request["items"])
        if request["bad"] is not None:
            if request["error"] is None:
                problems.append(f"served a request with a bad item: {names}")
        elif request["error"] is not None:
            problems.append(f"refused a good request ({names}): {request['error']}")
        else:
            difference = float(np.abs(request["result"] - reference[request["indices"]]).max())
            worst = max(worst, difference)
            if difference > ATOL:
                problems.append(f"cross-talk: {names} differ from one at a time by {difference:.2e}")
    return worst, problems


def bomb_costs(path, unlimited_path, bomb, real, peak, unlimited_counts):
    """Requests of 1 and 4 20,000 x 20,000 PNGs with the limit, of `unlimited_counts` without: [(row...)]."""
    rows = []
    for label, export_path, counts in (("with the limit", path, (1, 4)),
                                       ("without the limit", unlimited_path, unlimited_counts)):
        client = InProcess(export_path)
        client.predict([real])  # warm
        for count in counts:
            before = peak.reset()
            start = time.perf_counter()
            try:
                client.predict([bomb] * count)
                outcome = "served"
            except Refused as refused:
                outcome = f"refused: {reason(str(refused))}"
            seconds = time.perf_counter() - start
            rows.append((f"{count} x 20,000 x 20,000 PNG ({len(bomb[1]) / 1e6:.2f} MB each)", label, seconds,
                         (peak.peak - before) / 2**30, max_rss() / 2**30, outcome))
        del client
    return rows


def max_rss():
    """The process's peak resident memory so far (bytes): exact, unlike a sampler, but never decreasing."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentiles(values):
    return np.percentile(np.array(values) * 1000, [50, 95, 99])


def define_flags():
    """The command line's flags, defined only when this file runs: tests import it beside
    benchmarks/bench_training.py (its own --out), and a process holds one set of absl flags."""
    flags.DEFINE_integer("threads", 4, "client threads")
    flags.DEFINE_integer("rounds", 12, "requests per thread")
    flags.DEFINE_integer("image_size", 224, "the export's evaluation size (demo stage 3)")
    flags.DEFINE_float("bad_share", 0.25, "share of requests carrying one bad item")
    flags.DEFINE_integer("seed", 0, "seed of the requests' sizes, images and bad items")
    flags.DEFINE_list("unlimited_counts", ["1"],
                      "requests of that many 20k PNGs sent WITHOUT the limit (4: ~8 GB peak process RSS)")
    flags.DEFINE_bool("rest", False, "over HTTP, through tfcxr/export/rest.py's stand-in")
    flags.DEFINE_string("url", None, "a running TF Serving: http://HOST:8501/v1/models/NAME:predict")
    flags.DEFINE_string("out", None, "default: benchmarks/results/serving.md (serving_http.md over HTTP)")


def main(argv):
    del argv
    over_http = bool(FLAGS.rest or FLAGS.url)
    out = Path(FLAGS.out or ROOT / "benchmarks" / "results" / ("serving_http.md" if over_http else "serving.md"))

    load_before = os.getloadavg()
    peak = PeakRss()
    with tempfile.TemporaryDirectory(prefix="bench_serving.") as work:
        work = Path(work)
        (work / "inputs").mkdir()
        good, bad = make_inputs(work / "inputs")
        path = None if FLAGS.url else build_export(work / "exports", FLAGS.image_size)
        if FLAGS.url:
            client, mode = OverHttp(FLAGS.url), f"HTTP, `--url={FLAGS.url}`"
        elif FLAGS.rest:
            server = rest.serving(path)
            client, mode = OverHttp(server.__enter__() + ":predict"), "HTTP, tfcxr/export/rest.py's stand-in (`--rest`)"
        else:
            client, mode = InProcess(path), "in-process (`tf.saved_model.load`, the signature called from each thread)"
        for size in range(1, MAX_BATCH + 1):
            client.predict(good[:size])  # warm every batch size
        print(f"{mode}: warmed up", flush=True)

        single_before = peak.reset()
        reference, single = one_at_a_time(client, good)
        single_peak = peak.peak
        print(f"one at a time: {len(good)} images, p50 {np.median(single) * 1000:.0f} ms", flush=True)

        soak_before = peak.reset()
        requests, wall = soak(client, good, bad, FLAGS.threads, FLAGS.rounds, FLAGS.bad_share, FLAGS.seed)
        soak_peak, process_peak = peak.peak, max_rss()
        worst, problems = check(requests, reference)
        served = [r for r in requests if r["error"] is None]
        images = sum(len(r["items"]) for r in served)
        print(f"soak: {len(requests)} requests, {images} images in {wall:.1f} s, {len(problems)} problems", flush=True)

        costs = []
        if not over_http:
            unlimited = build_export(work / "unlimited", FLAGS.image_size, max_image_side=2**31 - 1,
                                     max_image_pixels=2**62)
            costs = bomb_costs(path, unlimited, bad[4], good[0], peak, [int(count) for count in FLAGS.unlimited_counts])
        if FLAGS.rest:
            server.__exit__(None, None, None)
    load_after = os.getloadavg()

    refusals = {}
    for request in requests:
        if request["bad"] is not None:
            refusals.setdefault(bad[request["bad"]][0], []).append(request["error"])
    command = " ".join(["benchmarks/bench_serving.py", *sys.argv[1:]])
    memory = ("" if over_http else
              f"- peak RSS: {single_peak / 2**30:.2f} GiB over the one-at-a-time pass "
              f"({(single_peak - single_before) / 2**20:.0f} MiB above its start), "
              f"{soak_peak / 2**30:.2f} GiB over the soak ({(soak_peak - soak_before) / 2**20:.0f} MiB above its "
              f"start); process peak so far (getrusage) {process_peak / 2**30:.2f} GiB\n")
    p_all, p_good, p_single = percentiles([r["latency"] for r in requests]), percentiles(
        [r["latency"] for r in served]), percentiles(single)
    lines = [
        "# Serving soak",
        "",
        f"`.venv/bin/python {command}`",
        "",
        f"{mode}. The demo-size AECNN (DenseNet121 classifier, evaluation size {FLAGS.image_size}), UNTRAINED "
        f"weights (throughput, not accuracy); limits {MAX_IMAGE_SIDE} a side, {MAX_IMAGE_PIXELS} pixels. "
        f"CPU: {machine.describe()}; shared with other work: "
        f"load average {load_before[0]:.1f} / {load_before[1]:.1f} before, {load_after[0]:.1f} / {load_after[1]:.1f} "
        "after (1 / 5 min). TensorFlow " + tf.__version__ + ".",
        "",
        f"- {FLAGS.threads} threads x {FLAGS.rounds} requests of 1-{MAX_BATCH} images from {len(good)} good inputs "
        f"(64 real PNGs, 2 RGBA, 16 JPEGs) and {len(bad)} bad ones, one bad item in {FLAGS.bad_share:.0%} of requests",
        f"- served: {len(served)} requests, {images} images in {wall:.1f} s: **{images / wall:.1f} images/s** "
        f"(one at a time: {len(good) / sum(single):.1f} images/s)",
        f"- latency per request, ms (p50 / p95 / p99): all {p_all[0]:.0f} / {p_all[1]:.0f} / {p_all[2]:.0f}; "
        f"served {p_good[0]:.0f} / {p_good[1]:.0f} / {p_good[2]:.0f}; one image alone, no concurrency "
        f"{p_single[0]:.0f} / {p_single[1]:.0f} / {p_single[2]:.0f}",
        f"- no cross-talk: every served request equals its images one at a time, max |difference| {worst:.1e} "
        f"(tolerance {ATOL:g})" if not problems else f"- PROBLEMS: {len(problems)}",
        *(f"  - {problem}" for problem in problems[:20]),
        f"- requests with a bad item: {sum(len(v) for v in refusals.values())}, refused with InvalidArgument "
        f"(HTTP 400): {sum(error is not None for v in refusals.values() for error in v)}",
        *(f"  - {name} ({len(errors)}x): {errors[0]}" for name, errors in sorted(refusals.items())),
    ]
    if memory:
        lines.append(memory.rstrip())
    if costs:
        lines += ["", "## One oversized image, alone (in-process)", "",
                  "| request | export | seconds | peak RSS increase, GiB (5 ms sampler) | process peak RSS so far, GiB "
                  "(getrusage) | outcome |", "|---|---|---|---|---|---|",
                  *(f"| {what} | {label} | {seconds:.2f} | {gib:.2f} | {so_far:.2f} | {outcome} |"
                    for what, label, seconds, gib, so_far, outcome in costs),
                  "", f"A real radiograph alone: {np.median(single):.3f} s (median of the one-at-a-time pass)."]
    text = "\n".join(lines) + "\n"
    write_text(out, text)
    print(text)
    peak.running = False
    return 1 if problems else 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
