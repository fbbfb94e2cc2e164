"""benchmarks/bench_serving.py's soak and checks with stand-in clients (no model): they catch cross-talk,
a served bad request and a refused good one, and every kind of bad input is sent."""

import numpy as np

from helpers import benchmark

bench = benchmark("bench_serving")

GOOD = [(f"good{k}.png", bytes([k]), None) for k in range(10)]
BAD = [(f"bad{k}.png", b"", None) for k in range(3)]
ASSERTION = ("Graph execution error:\n\nDetected at node map/while/Assert/Assert defined at (most recent call last):\n"
             "<stack traces unavailable>\nassertion failed: [image_bytes: image 2 declares 20000x20000 pixels]\n"
             "\t [[{{node map/while/Assert/Assert}}]] [Op:__inference_signature_wrapper_serve_bytes_2473]")


class Client:
    """Probabilities = the item's byte, per item; refuses bad items unless told otherwise."""

    def __init__(self, leak=False, serve_bad=False, refuse_all=False):
        self.leak, self.serve_bad, self.refuse_all = leak, serve_bad, refuse_all

    def predict(self, items):
        if self.refuse_all or (not self.serve_bad and any(name.startswith("bad") for name, _, _ in items)):
            raise bench.Refused(ASSERTION)
        probabilities = np.array([[data[0] if data else 0] * 14 for _, data, _ in items], np.float32)
        if self.leak and len(items) > 1:
            probabilities[0] += probabilities[1]  # one request's image leaks into another's result
        return probabilities


def run(client, rounds=12):
    reference, latencies = bench.one_at_a_time(Client(), GOOD)
    requests, wall = bench.soak(client, GOOD, BAD, threads=3, rounds=rounds, bad_share=0.4, seed=0)
    return requests, bench.check(requests, reference)


def test_a_correct_server_passes_and_every_bad_kind_is_sent():
    requests, (worst, problems) = run(Client())
    assert len(requests) == 36 and worst == 0 and problems == []
    assert {BAD[r["bad"]][0] for r in requests if r["bad"] is not None} == {name for name, _, _ in BAD}
    assert all(1 <= len(r["items"]) <= bench.MAX_BATCH for r in requests)
    refused = [r["error"] for r in requests if r["bad"] is not None]
    assert refused and all(error == "[image_bytes: image 2 declares 20000x20000 pixels]" for error in refused)


def test_cross_talk_served_bad_and_refused_good_are_caught():
    _, (_, problems) = run(Client(leak=True))
    assert any(problem.startswith("cross-talk") for problem in problems)
    _, (_, problems) = run(Client(serve_bad=True))
    assert any(problem.startswith("served a request with a bad item") for problem in problems)
    _, (_, problems) = run(Client(refuse_all=True))
    assert any(problem.startswith("refused a good request") for problem in problems)


def test_reason_is_the_line_that_says_why():
    assert bench.reason(ASSERTION) == "[image_bytes: image 2 declares 20000x20000 pixels]"
    assert bench.reason("Invalid PNG data, size 83574\n\t [[{{node decode}}]]") == "Invalid PNG data, size 83574"
    assert bench.reason("plain message") == "plain message"
