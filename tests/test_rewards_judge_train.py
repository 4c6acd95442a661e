"""The HTTP judge wired from the config into real training runs (engine.trainer.run on the tiny VLM), against local
servers on 127.0.0.1: one that never answers and one that grades.

The hanging judge: the run finishes, no RL step waits longer than a request's worst case (timeout x tries plus
backoff) plus slack, and every judged sample is a counted failure (reward_errors/judge). A reward that raises on
every sample rides along and does not stop training either. The grading judge then gives a non-zero judge part.
SFT (20 steps on "<answer>{answer}</answer>") first, so the sampled responses hold an answer to judge.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data.synth import write_dataset
from engine import trainer
from engine.config.settings import Config
from engine.config.parsing import build_config
from rewards import REWARDS
from rewards.combine import reward_fn

TIMEOUT_S, RETRIES, BACKOFF_S = 0.5, 1, 0.5  # BACKOFF_S: rewards.judge.Judge's default, slept between the two tries


class JudgeServer(BaseHTTPRequestHandler):
    """verdict None: hold every request until released (a hung judge); else answer that text."""

    verdict: str | None = None
    release = threading.Event()
    prompts: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        JudgeServer.prompts.append(body["messages"][0]["content"])
        if self.verdict is None:
            JudgeServer.release.wait(30)
            return
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": self.verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(verdict):
        handler = type("Handler", (JudgeServer,), {"verdict": verdict})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    JudgeServer.prompts.clear()
    yield start
    JudgeServer.release.set()
    for server in servers:
        server.shutdown()
        server.server_close()
    JudgeServer.release.clear()


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    out = tmp_path_factory.mktemp("colors")
    write_dataset("colors", 8, str(out), seed=3)
    return out / "data.jsonl"


def _cfg(data, out_dir, url, weights, *extra):
    return build_config(Config, overrides=[
        "--data.train", str(data), "--train.out_dir", str(out_dir), "--train.threads", "1",
        "--train.tensorboard", "false", "--train.sample_every", "0", "--rl.steps", "2",
        "--rollout.group_size", "2", "--rollout.prompts_per_step", "2", "--rollout.max_new_tokens", "16",
        "--rollout.temperature", "0.5", "--reward.weights", json.dumps(weights), "--reward.judge.url", url,
        "--reward.judge.model", "judge-model", "--reward.judge.timeout_s", str(TIMEOUT_S),
        "--reward.judge.retries", str(RETRIES), *extra])


def _rl_metrics(out_dir):
    return [r for r in map(json.loads, open(Path(out_dir) / "metrics.jsonl")) if "reward/total" in r]


def _timed_rl_steps(monkeypatch):
    """Spy on trainer.rl_step: the wall time of each call."""
    real, times = trainer.rl_step, []

    def timed(*args, **kwargs):
        start = time.monotonic()
        out = real(*args, **kwargs)
        times.append(time.monotonic() - start)
        return out

    monkeypatch.setattr(trainer, "rl_step", timed)
    return times


@pytest.mark.slow
def test_hung_judge_and_raising_reward_do_not_stall_training(colors, tmp_path, serve, monkeypatch, registered):
    def boom(completion, example, ctx):
        raise RuntimeError("a reward with a bug")

    registered(REWARDS, "boom", boom)
    times = _timed_rl_steps(monkeypatch)
    hung = serve(None)
    cfg = _cfg(colors, tmp_path / "hung", hung, {"judge": 1.0, "boom": 0.5}, "--train.stage", "sft,rl",
               "--sft.steps", "20", "--sft.batch_size", "8", "--sft.lr", "3e-3",
               "--data.sft_template", "<answer>{answer}</answer>")
    summary = trainer.run(cfg)
    assert summary["done_stages"] == ["sft", "rl"] and len(times) == 2
    # Worst case of one request: two tries of TIMEOUT_S with BACKOFF_S between (requests run concurrently);
    # 2 s of slack for the step's own rollout and update on a busy machine.
    assert max(times) < TIMEOUT_S * (RETRIES + 1) + BACKOFF_S + 2.0, times
    metrics = _rl_metrics(tmp_path / "hung")
    judge = reward_fn("judge", cfg.reward.components)  # the one the run built from [reward.judge]
    assert judge.stats["ok"] == 0 and judge.stats["failed"] >= 2  # at least one answer per step reached the judge
    assert sum(m["reward_errors/judge"] for m in metrics) == judge.stats["failed"]
    assert len(JudgeServer.prompts) == judge.stats["requests"] == judge.stats["failed"] * (RETRIES + 1)
    assert all(m["reward_errors/boom"] == 4 and m["reward/total"] == 0.0 for m in metrics)  # 4 samples per step

    grading = serve("Score: 0.75")
    sft_model = Path(summary["final_checkpoint"]) / "model"  # RL with all-zero rewards left the SFT weights as is
    trainer.run(_cfg(colors, tmp_path / "graded", grading, {"judge": 1.0}, "--train.stage", "rl",
                     "--model.path", str(sft_model)))
    metrics = _rl_metrics(tmp_path / "graded")
    assert all(m["reward_errors/judge"] == 0 for m in metrics)
    assert sum(m["reward/judge"] for m in metrics) > 0  # each judged sample scores 0.75
    assert all(m["reward/judge"] * 4 / 0.75 == pytest.approx(round(m["reward/judge"] * 4 / 0.75)) for m in metrics)
    assert "Reference answer:" in JudgeServer.prompts[-1]  # the default reward.judge.prompt
