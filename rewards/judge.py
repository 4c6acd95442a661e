"""An LLM/VLM judge reward over an OpenAI-compatible HTTP endpoint, with urllib only (no new packages).

Use: weight "judge" in reward.weights and set its section, `[reward.judge] url = "http://127.0.0.1:8000/v1"`,
`model = "Qwen/Qwen2.5-VL-72B-Instruct"` (JudgeSettings below); the run builds the reward once from them and
`score_batch` calls `judge.batch(...)` once per step (requests run concurrently). By hand:
`make_judge_reward(url, model, prompt_template, ...)`.

Each sample: extract the answer (`rewards.format.extract_answer`, "auto"); no answer, or one longer than
`max_answer_chars` (`answer_length_cap`: a dump of candidates earns nothing), scores 0 without a request.
Otherwise POST {base_url}/chat/completions {"model", "messages": [{"role": "user", "content": prompt}],
"temperature": 0} and read choices[0].message.content: "yes"/"correct"/"true" -> 1, "no"/"incorrect"/"false"
-> 0, or a bare number in [0, 1] ("0.8", "Score: 0.8"); anything else is garbage. The reply is read up to
MAX_REPLY_BYTES (more is garbage) and parsed as JSON data; nothing in it is ever evaluated.
Failures never stall a step, and nothing outlives it: each attempt of a request has `timeout_s` IN ALL (connect,
headers and body: a server that sends headers and then trickles bytes is cut at the deadline, not kept alive by
each byte as a socket timeout would be), transport errors and HTTP 429/5xx are retried `retries` times with
exponential backoff (`backoff_s` * 2**attempt), garbage is not retried, at most `max_concurrency` requests run at
once, and the whole batch stops at `deadline_s` (default: one request's worst case, timeout_s * (retries + 1) +
backoffs, plus 1 s; raise it when a batch is larger than max_concurrency and the judge is slow). The deadlines are
kept by the calling thread, which shuts down the socket of any request past its own or the batch's deadline, so
every worker thread has ended when `batch()` returns. A failed sample is `None` in `batch()` (score_batch scores it
0 and counts it in errors) and is counted in `judge.stats`.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from data.example import Example
from rewards.format import answer_length_cap, extract_answer, response_text
from registry import doc
from rewards.registry import RewardContext, register

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1 << 16  # a verdict and its JSON envelope take a few hundred bytes
_YES = re.compile(r"\W*(yes|correct|true|right)\b")
_NO = re.compile(r"\W*(no|not|incorrect|false|wrong)\b")
_SCORE = re.compile(r"\W*(?:score\s*[:=]?\s*)?(\d+(?:\.\d+)?)\s*\.?\s*")


class JudgeError(RuntimeError):
    """The judge gave no usable verdict (timeout, transport error, garbage)."""


class HTTPStatus(Exception):
    """A reply with an HTTP error status (retried for 429 and 5xx)."""

    def __init__(self, code: int):
        super().__init__(f"HTTP {code}")
        self.code = code


class Cancelled(Exception):
    """The batch's deadline passed while this request waited or backed off."""

POLL_S = 0.05  # how often the calling thread looks at the deadlines while requests run


def parse_verdict(content: str) -> float | None:
    """1.0 / 0.0 for a yes / no verdict, a bare number in [0, 1] as is, None for anything else."""
    text = content.strip().lower()
    if _YES.match(text):
        return 1.0
    if _NO.match(text):
        return 0.0
    m = _SCORE.fullmatch(text)
    if m and 0.0 <= float(m.group(1)) <= 1.0:
        return float(m.group(1))
    return None


@dataclass
class _Flight:
    """One batch's requests in flight: their connections and deadlines, and the batch's cancel flag."""

    cancel: threading.Event = field(default_factory=threading.Event)
    open: dict = field(default_factory=dict)  # id(socket) -> (socket, deadline)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, sock: socket.socket, deadline: float) -> None:
        with self.lock:
            self.open[id(sock)] = (sock, deadline)

    def untrack(self, sock: socket.socket | None) -> None:
        with self.lock:
            self.open.pop(id(sock), None)

    def cut(self, now: float) -> None:
        """Shut down the sockets of requests whose deadline is at or before `now` (their threads' reads end)."""
        with self.lock:
            due = [sock for sock, deadline in self.open.values() if deadline <= now]
        for sock in due:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class Judge:
    base_url: str
    model: str
    prompt_template: str  # str.format fields: {question}, {reference}, {answer}
    timeout_s: float = 10.0
    retries: int = 2
    max_concurrency: int = 8
    max_answer_chars: int = 500
    backoff_s: float = 0.5
    deadline_s: float | None = None  # per batch; None: one request's worst case + 1 s
    stats: Counter = field(default_factory=Counter, init=False)  # requests ok failed no_answer too_long past_deadline
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self):
        if self.timeout_s <= 0 or self.retries < 0 or self.max_concurrency < 1 or self.max_answer_chars < 1:
            raise ValueError("judge needs timeout_s > 0, retries >= 0, max_concurrency >= 1, max_answer_chars >= 1")
        try:
            self.prompt_template.format(question="", reference="", answer="")
        except (KeyError, IndexError) as exc:
            raise ValueError(f"judge prompt_template may only use {{question}}, {{reference}}, {{answer}} (write "
                             f"literal braces as {{{{ }}}}): {exc!r}") from exc
        if self.deadline_s is None:
            backoffs = sum(self.backoff_s * 2**k for k in range(self.retries))
            self.deadline_s = self.timeout_s * (self.retries + 1) + backoffs + 1.0

    def __call__(self, completion: str, example: Example, ctx: RewardContext) -> float:
        value = self.batch([completion], [example], [ctx])[0]
        if value is None:
            raise JudgeError(f"judge at {self.base_url} gave no verdict for {example.origin or 'sample'}")
        return value

    def batch(self, completions: list[str], examples: list[Example], contexts: list[RewardContext] | None = None,
              ) -> list[float | None]:
        """One score per sample (None where the judge failed), within `deadline_s` whatever the server does."""
        contexts = contexts if contexts is not None else [RewardContext() for _ in completions]
        if not len(completions) == len(examples) == len(contexts):
            raise ValueError("judge.batch needs one example and one context per completion")
        results: list[float | None] = [0.0] * len(completions)
        prompts = {}
        for i, (completion, example, ctx) in enumerate(zip(completions, examples, contexts)):
            answer = extract_answer(response_text(completion, ctx), "auto")
            capped = answer_length_cap(answer, self.max_answer_chars)
            if capped is None:
                self._count("no_answer" if answer is None else "too_long")
                continue
            prompts[i] = self.prompt_template.format(question=example.question, reference=example.answer,
                                                     answer=capped)
        if not prompts:
            return results
        outcomes = self._run(prompts)
        reasons, late = [], 0
        for i, (value, reason) in outcomes.items():
            results[i] = value
            if value is None:
                reasons.append(reason)
                late += reason.startswith("past the")
        self._count("ok", len(prompts) - len(reasons))
        self._count("failed", len(reasons))
        self._count("past_deadline", late)
        if reasons:
            log.warning("judge %s: %d/%d requests failed (scored 0); first: %s", self.base_url, len(reasons),
                        len(prompts), reasons[0])
        return results

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _run(self, prompts: dict[int, str]) -> dict[int, tuple[float | None, str]]:
        """Every prompt's (verdict, why-not), within `deadline_s`; every worker thread has ended on return."""
        flight, end = _Flight(), time.monotonic() + self.deadline_s
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts)))
        futures = {i: pool.submit(self._judge_one, prompt, flight) for i, prompt in prompts.items()}
        try:
            while True:
                _, pending = wait(futures.values(), timeout=POLL_S)
                flight.cut(time.monotonic())  # each request's own deadline
                if not pending or time.monotonic() >= end:
                    break
        finally:
            flight.cancel.set()
            flight.cut(float("inf"))  # the batch's deadline: every request still in flight ends now
            pool.shutdown(wait=True, cancel_futures=True)  # quick: no worker is blocked any more
        late = (None, f"past the {self.deadline_s:.1f} s deadline")
        return {i: late if f.cancelled() else f.result() for i, f in futures.items()}

    def _judge_one(self, prompt: str, flight: _Flight) -> tuple[float | None, str]:
        """(verdict, "") or (None, why). Retries transport errors and 429/5xx; never raises."""
        reason, cancel = "", flight.cancel
        for attempt in range(self.retries + 1):
            if attempt and cancel.wait(self.backoff_s * 2 ** (attempt - 1)):
                break
            if cancel.is_set():
                break
            self._count("requests")
            try:
                content = self._post(prompt, flight)
            except HTTPStatus as exc:
                reason = str(exc)
                if exc.code != 429 and exc.code < 500:
                    return None, reason
                continue
            except (OSError, http.client.HTTPException) as exc:  # timeouts and cut sockets are OSErrors
                reason = f"transport: {exc!r}"
                continue
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                return None, f"malformed response: {exc!r}"
            verdict = parse_verdict(content)
            return (verdict, "") if verdict is not None else (None, f"unparseable verdict {content[:80]!r}")
        if cancel.is_set():
            return None, f"past the {self.deadline_s:.1f} s deadline ({reason or 'not sent'})"
        return None, reason

    def _post(self, prompt: str, flight: _Flight) -> str:
        """One attempt, `timeout_s` in all: connect, headers and body (read in pieces, each within what is left;
        the calling thread cuts the socket at the deadline, which bounds a trickle of headers too)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        url = urllib.parse.urlsplit(self.base_url.rstrip("/") + "/chat/completions")
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        deadline = time.monotonic() + self.timeout_s
        conn, sock = kind(url.hostname, url.port, timeout=self.timeout_s), None  # connect: one bounded operation
        try:
            if flight.cancel.is_set():
                raise Cancelled()
            conn.connect()
            sock = conn.sock  # kept: the connection drops its reference once a closing reply's headers are in
            flight.track(sock, deadline)
            conn.request("POST", url.path + (f"?{url.query}" if url.query else ""), body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            if response.status >= 400:
                raise HTTPStatus(response.status)
            raw = b""
            while len(raw) <= MAX_REPLY_BYTES:  # never more: a runaway reply must not fill memory
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"reply not complete after {self.timeout_s:g} s")
                sock.settimeout(left)
                chunk = response.read1(MAX_REPLY_BYTES + 1 - len(raw))
                if not chunk:
                    break
                raw += chunk
            if time.monotonic() >= deadline or response.length:  # cut at the deadline, or fewer bytes than said
                raise TimeoutError(f"reply not complete after {self.timeout_s:g} s")
        except Cancelled:
            raise OSError("cancelled: past the batch deadline") from None
        finally:
            flight.untrack(sock)
            conn.close()
        if len(raw) > MAX_REPLY_BYTES:
            raise ValueError(f"reply over {MAX_REPLY_BYTES} bytes")
        payload = json.loads(raw.decode("utf-8"))  # parsed as JSON data, never evaluated
        content = payload["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"message content is {type(content).__name__}, not str")
        return content


def make_judge_reward(base_url: str, model: str, prompt_template: str, timeout_s: float = 10.0, retries: int = 2,
                      max_concurrency: int = 8, **options) -> Judge:
    """A RewardFn (with a `.batch` method and `.stats`) that asks the judge at `base_url`. Options: see Judge."""
    return Judge(base_url=base_url, model=model, prompt_template=prompt_template, timeout_s=timeout_s,
                 retries=retries, max_concurrency=max_concurrency, **options)


@dataclass
class JudgeSettings:
    """`[reward.judge]`: the endpoint and how long a step may wait for it."""

    url: str = doc("", "OpenAI-compatible base URL of an LLM/VLM judge, e.g. http://127.0.0.1:8000/v1 (a local vLLM server).")
    model: str = doc("", "Model name the judge endpoint serves (the request's 'model').")
    prompt: str = doc("Question: {question}\nReference answer: {reference}\nResponse: {answer}\nIs the response correct? Answer yes or no.", "Judge prompt; {question}, {reference} and {answer} (the response's extracted answer) are filled in. The judge must reply yes/no or a number in [0, 1].")
    timeout_s: float = doc(10.0, "Seconds one judge request may take before it counts as failed.", gt=0.0)
    retries: int = doc(2, "Retries of a judge request after a timeout, a transport error or HTTP 429/5xx (a step waits at most about timeout x (retries + 1) plus backoff).", ge=0)
    max_concurrency: int = doc(8, "Judge requests in flight at once.", ge=1)

    def validate(self) -> None:
        if not self.url or not self.model:
            raise ValueError("[reward.judge] needs url (an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1, "
                             "a local vLLM server) and model (the name it serves): --reward.judge.url URL "
                             "--reward.judge.model NAME")
        Judge(base_url=self.url, model=self.model, prompt_template=self.prompt)  # the prompt's fields, checked


@register("judge", settings=JudgeSettings)
def judge(s: JudgeSettings) -> Judge:
    """The HTTP judge built from its settings (weighted as "judge" in reward.weights)."""
    return make_judge_reward(s.url, s.model, s.prompt, timeout_s=s.timeout_s, retries=s.retries,
                             max_concurrency=s.max_concurrency)
