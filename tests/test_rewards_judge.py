"""The HTTP judge (rewards/judge.py) against a local OpenAI-compatible server on 127.0.0.1 (random port).

The fake server reads the prompt: "hang-me" sleeps past any client timeout, "garbage-me" answers a body that is
not JSON, "flaky-me" fails once with HTTP 503 then works, anything else gets "yes" when the response equals
the reference and "no" otherwise.
"""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest

from data.example import Example
from rewards import REWARDS, RewardContext, make_judge_reward, score_batch
from rewards.judge import JudgeError, parse_verdict
from tests.local_http import local_server

TEMPLATE = "Question: {question}\nReference: {reference}\nResponse: {answer}\nCorrect? yes or no."


class FakeJudge(BaseHTTPRequestHandler):
    release = threading.Event()  # set at teardown so hung handlers end
    hits = Counter()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["model"] == "judge-model"
        prompt = body["messages"][0]["content"]
        fields = dict(line.split(": ", 1) for line in prompt.splitlines() if ": " in line)
        FakeJudge.hits[fields["Response"]] += 1
        if fields["Response"] == "hang-me":
            FakeJudge.release.wait(10)
        if fields["Response"] == "flaky-me" and FakeJudge.hits["flaky-me"] == 1:
            return self._send(503, b"busy")
        if fields["Response"] == "garbage-me":
            return self._send(200, b"<html>not json</html>")
        if fields["Response"] == "huge-me":  # a valid "yes" buried after 1 MB: over the reply cap, never parsed
            pad = " " * (1 << 20)
            return self._send(200, json.dumps({"pad": pad, "choices": [{"message": {"content": "Yes"}}]}).encode())
        if fields["Response"] == "code-me":  # a reply that would run code if anything evaluated it
            content = "__import__('os').system('touch JUDGE_RAN_CODE') or 1"
            return self._send(200, json.dumps({"choices": [{"message": {"content": content}}]}).encode())
        verdict = "Yes." if fields["Response"] in (fields["Reference"], "flaky-me") else "No."
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode())

    def _send(self, code, payload):
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (timeout): nothing to answer
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    with local_server(FakeJudge) as url:
        yield url + "/v1"
        FakeJudge.release.set()


@pytest.fixture(autouse=True)
def fresh_hits():
    FakeJudge.hits.clear()


def _ex(answer="red"):
    return Example(question="What colour?", answers=[answer], images=[])


@pytest.mark.parametrize("content, expected", [
    ("Yes.", 1.0), ("correct", 1.0), ("No", 0.0), ("Incorrect.", 0.0), ("Score: 0.8", 0.8), ("0", 0.0),
    ("7", None), ("maybe", None), ("", None),
])
def test_parse_verdict(content, expected):
    assert parse_verdict(content) == expected


def test_batch_with_good_garbage_and_hung_answers_finishes_in_time(base_url, registered):
    timeout_s, retries = 0.3, 1
    judge = make_judge_reward(base_url, "judge-model", TEMPLATE, timeout_s=timeout_s, retries=retries,
                              max_concurrency=4, backoff_s=0.05)
    completions = [f"<answer>{a}</answer>" for a in ("red", "blue", "garbage-me", "hang-me")]
    examples, ctxs = [_ex()] * 4, [RewardContext()] * 4
    start = time.monotonic()
    scores = judge.batch(completions, examples, ctxs)
    elapsed = time.monotonic() - start
    # the hung request times out twice (1 try + 1 retry) = 0.6 s plus 0.05 s backoff; 1 s slack for a busy machine
    assert elapsed < timeout_s * (retries + 1) + 1.0
    assert scores == [1.0, 0.0, None, None]  # None: failed (garbage is not retried, the hang is)
    assert FakeJudge.hits["hang-me"] == 2 and FakeJudge.hits["garbage-me"] == 1
    assert judge.stats["ok"] == 2 and judge.stats["failed"] == 2
    registered(REWARDS, "judge_under_test", judge)  # through score_batch: failures score 0 and are counted
    out = score_batch(completions[:3], examples[:3], ctxs[:3], {"judge_under_test": 1.0})
    assert out.parts["judge_under_test"] == [1.0, 0.0, 0.0] and out.errors["judge_under_test"] == 1


def test_deadline_bounds_a_batch_even_with_a_long_timeout(base_url):
    judge = make_judge_reward(base_url, "judge-model", TEMPLATE, timeout_s=5.0, retries=0, deadline_s=0.3)
    start = time.monotonic()
    scores = judge.batch(["<answer>hang-me</answer>", "<answer>red</answer>"], [_ex(), _ex()])
    assert time.monotonic() - start < 0.3 + 1.0  # the deadline, not the 5 s timeout
    assert scores == [None, 1.0] and judge.stats["past_deadline"] == 1


def test_retry_after_503_and_answers_that_never_reach_the_judge(base_url):
    judge = make_judge_reward(base_url, "judge-model", TEMPLATE, timeout_s=2.0, retries=1, backoff_s=0.01,
                              max_answer_chars=10)
    completions = ["<answer>flaky-me</answer>", "<think>red</think>", "<answer>red, blue, green, pink</answer>"]
    assert judge.batch(completions, [_ex()] * 3) == [1.0, 0.0, 0.0]  # 503 then yes; no answer; over the cap
    assert FakeJudge.hits["flaky-me"] == 2  # one retry
    assert judge.stats["no_answer"] == 1 and judge.stats["too_long"] == 1 and judge.stats["requests"] == 2
    assert judge("<answer>red</answer>", _ex(), RewardContext()) == 1.0
    with pytest.raises(JudgeError):  # the per-sample call raises so score_batch counts it
        judge("<answer>garbage-me</answer>", _ex(), RewardContext())


def test_bad_template_is_refused():
    with pytest.raises(ValueError, match="prompt_template"):
        make_judge_reward("http://127.0.0.1:1", "m", "Is {response} right?")


class Trickle(BaseHTTPRequestHandler):
    """Headers and then one byte every 0.2 s (`/headers/...`: a status line, then header bytes one at a time)."""

    stop = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        try:
            if self.path.startswith("/headers"):
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            else:
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
            while not Trickle.stop.wait(0.2):
                self.wfile.write(b"X")
                self.wfile.flush()
        except OSError:  # cut by the client, as it should be
            pass

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_trickling_judge_is_cut_at_the_deadline_and_no_thread_outlives_the_batch(where):
    with local_server(Trickle) as root:
        try:
            url = f"{root}/{where}/v1"
            judge = make_judge_reward(url, "judge-model", TEMPLATE, timeout_s=0.6, retries=1, backoff_s=0.05)
            before = {t.ident for t in threading.enumerate()}
            start = time.monotonic()
            scores = judge.batch(["<answer>red</answer>"] * 3, [_ex()] * 3)
            elapsed = time.monotonic() - start
            # each of the 2 attempts is cut at 0.6 s in all (a socket timeout alone never fires: a byte comes every
            # 0.2 s); 0.05 s backoff; 1 s slack for a busy machine
            assert scores == [None] * 3 and elapsed < 2 * 0.6 + 0.05 + 1.0
            assert judge.stats["failed"] == 3 and judge.stats["requests"] == 6
            mine = [t for t in threading.enumerate() if t.ident not in before and "ThreadPoolExecutor" in t.name]
            assert mine == []  # every worker has ended when batch() returns
        finally:
            Trickle.stop.set()  # a trickling handler ends, so the server's close does not wait on it
    Trickle.stop.clear()
