"""docs/PLUGINS.md run as written: its python blocks, in order, are one plugin file OUTSIDE the repository
(my_fork.py in a temporary folder). Each component is checked against values worked out by hand; the file trains
the demo preset with `train.py --plugin` and under a 2-process torchrun; the 2-process RL step with its KL-Cov
step pass and REINFORCE++ whole-batch std equals one process's; parse-time errors are one line each. Nothing in the
repository knows these names."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.synth import write_dataset
from engine.algo.losses import LossInputs, StepTokens, aggregate, token_metric_means
from engine.config import plugins
from engine.config.registries import ADVANTAGES, LOSSES
from engine.forward.logprobs import token_logps
from rewards.combine import reward_fn
from rewards.registry import REWARDS, RewardContext
from tests.test_train_distributed import _free_port
from tools.registry import TOOLS, call_tool

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PLUGINS.md"
NAMES = {LOSSES: ("ppo_clip_entropy", "kl_cov"), ADVANTAGES: ("reinforce_pp_baseline",), REWARDS: ("brevity",),
         TOOLS: ("threshold",)}
F64 = torch.float64


@pytest.fixture(scope="module")
def fork_file(tmp_path_factory) -> Path:
    """The doc's python blocks, in order, as one file outside the repository."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    path = tmp_path_factory.mktemp("research") / "my_fork.py"
    path.write_text("\n\n".join(blocks))
    assert not path.resolve().is_relative_to(ROOT)
    return path


@pytest.fixture(scope="module")
def fork(fork_file):
    """Imported through the plugin loader; its names are removed again after this module's tests."""
    assert not any(n in registry for registry, names in NAMES.items() for n in names)
    plugins.load_all([str(fork_file)])
    yield sys.modules[plugins.load(str(fork_file))]
    for registry, names in NAMES.items():
        for name in names:
            registry.unregister(name)
    plugins._LOADED.pop(str(fork_file), None)


def _t(values, **kw):
    return torch.tensor(values, dtype=F64, **kw)


# ------------------------------------------------------------------------------------------------- the entropy bonus

@pytest.mark.parametrize("chunk", [0, 2])  # the plain autograd path, and the chunked one (logits recomputed)
def test_entropy_bonus_gradient_equals_autograd_of_the_formula(fork, chunk):
    # 5 tokens, hidden 3, vocab 4. The loss: on-policy PPO-clip (ratio 1: per token −A, gradient −A·∇logp) minus
    # coef·entropy, entropy WITH gradient through token_logps (the step's path, whose logits are float32).
    # Reference: the same objective written from log_softmax directly, differentiated by autograd.
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 3, generator=gen)
    weight, bias = torch.randn(4, 3, generator=gen), torch.randn(4, generator=gen)
    tok = torch.tensor([0, 3, 1, 2, 2])
    adv, mask = torch.tensor([1.0, -0.5, 2.0, 0.0, -1.0]), torch.tensor([1.0, 1, 1, 0, 1])
    s = LOSSES.entry("ppo_clip_entropy").settings(coef=0.3)

    def ours():
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        logp, entropy = token_logps(h, w, bias, tok, temperature=0.7, with_entropy=True, chunk_tokens=chunk,
                                    entropy_grad=True)
        x = LossInputs(logp=logp, old_logp=logp.detach(), adv=adv, mask=mask, seq_idx=torch.zeros(5, dtype=torch.long),
                       num_seqs=1, entropy=entropy)
        per_token, _ = LOSSES["ppo_clip_entropy"](x, s)
        torch.where(mask > 0, per_token, 0.0).sum().backward()
        return h.grad, w.grad

    def formula():
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        logq = torch.log_softmax((h @ w.T + bias) / 0.7, -1)
        logp = logq.gather(-1, tok[:, None])[:, 0]
        entropy = -(logq.exp() * logq).sum(-1)
        per_token = -adv * torch.exp(logp - logp.detach()) - 0.3 * entropy
        (per_token * mask).sum().backward()
        return h.grad, w.grad

    for got, want in zip(ours(), formula()):
        assert got.abs().sum() > 0.1  # a real gradient, compared to float32's rounding
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_without_the_declaration_the_entropy_carries_no_gradient():
    h, w = torch.randn(5, 3, dtype=F64, requires_grad=True), torch.randn(4, 3, dtype=F64, requires_grad=True)
    for chunk in (0, 2):
        _, entropy = token_logps(h, w, None, torch.zeros(5, dtype=torch.long), with_entropy=True, chunk_tokens=chunk)
        assert not entropy.requires_grad


# ------------------------------------------------------------------------------------------------- KL-Cov

def _kl_cov_batch():
    # 6 loss tokens over 2 rows of 3. old_logp and A chosen so the covariances are easy: mean old_logp = −1,
    # mean A = 0; cov = (old + 1)·A = [0.5, 0, −0.5, 0.75·(−1), −0.75·(−1), 0] = [0.5, 0, −0.5, −0.75, 0.75, 0].
    old = _t([-0.5, -1.0, -1.5, -0.25, -1.75, -1.0])
    adv = _t([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    logp = old + _t([0.1, -0.2, 0.3, 0.2, -0.1, -0.4])
    return old, adv, logp


def test_kl_cov_penalises_nothing_without_covariance(fork):
    """Every advantage 0 (a step whose groups all tied): every covariance is 0, so is the top-k threshold, and no
    token is penalised (">=" alone would have chosen all of them)."""
    old, _, logp = _kl_cov_batch()
    adv = torch.zeros(6, dtype=F64)
    s = LOSSES.entry("kl_cov").settings(ratio=0.34, coef=2.0)
    stats = LOSSES.entry("kl_cov").traits["step_pass"](StepTokens(old_logp=old, adv=adv), s)
    x = LossInputs(logp=logp, old_logp=old, adv=adv, mask=torch.ones(6, dtype=F64),
                   seq_idx=torch.tensor([0, 0, 0, 1, 1, 1]), num_seqs=2, step_stats=stats)
    per_token, metrics = LOSSES["kl_cov"](x, s)
    torch.testing.assert_close(per_token, torch.zeros(6, dtype=F64))  # −0·ρ, no penalty
    assert token_metric_means(metrics, x.mask)["kl_cov_frac"].item() == 0.0


def test_kl_cov_penalises_the_steps_top_covariance_tokens(fork):
    old, adv, logp = _kl_cov_batch()
    s = LOSSES.entry("kl_cov").settings(ratio=0.34, coef=2.0)  # k = int(6 × 0.34) = 2 tokens: covs 0.75 and 0.5
    stats = LOSSES.entry("kl_cov").traits["step_pass"](StepTokens(old_logp=old, adv=adv), s)
    assert stats["mean_logp"].item() == pytest.approx(-1.0) and stats["threshold"].item() == pytest.approx(0.5)
    logp = logp.clone().requires_grad_(True)
    x = LossInputs(logp=logp, old_logp=old, adv=adv, mask=torch.ones(6, dtype=F64),
                   seq_idx=torch.tensor([0, 0, 0, 1, 1, 1]), num_seqs=2, step_stats=stats)
    per_token, metrics = LOSSES["kl_cov"](x, s)
    # −A·ρ everywhere; + 2·|Δ| on tokens 0 (Δ 0.1) and 4 (Δ −0.1)
    rho = torch.exp(logp.detach() - old)
    want = -adv * rho + _t([0.2, 0, 0, 0, 0.2, 0])
    torch.testing.assert_close(per_token.detach(), want)
    assert token_metric_means(metrics, x.mask)["kl_cov_frac"].item() == pytest.approx(2 / 6)
    (g,) = torch.autograd.grad(per_token.sum(), logp)
    torch.testing.assert_close(g, -adv * rho + _t([2.0, 0, 0, 0, -2.0, 0]))  # d|Δ|/dlogp = 2·sign(Δ)


def test_kl_cov_micro_batched_equals_full_batch_given_the_step_statistics(fork):
    old, adv, logp = _kl_cov_batch()
    s = LOSSES.entry("kl_cov").settings(ratio=0.34, coef=2.0)
    stats = LOSSES.entry("kl_cov").traits["step_pass"](StepTokens(old_logp=old, adv=adv), s)

    def loss(sl, seq, num_tokens=6):
        x = LossInputs(logp=logp[sl], old_logp=old[sl], adv=adv[sl], mask=torch.ones(len(seq), dtype=F64),
                       seq_idx=torch.tensor(seq), num_seqs=2, step_stats=stats)
        return aggregate(LOSSES["kl_cov"](x, s)[0], mask=x.mask, seq_idx=x.seq_idx, mode="token_mean",
                         num_tokens=num_tokens, num_seqs=2)

    whole = loss(slice(0, 6), [0, 0, 0, 1, 1, 1])
    parts = loss(slice(0, 3), [0, 0, 0]) + loss(slice(3, 6), [0, 0, 0])
    torch.testing.assert_close(parts, whole)
    # without the step's statistics, the second micro-batch alone would choose other tokens: the pass matters
    alone = LOSSES.entry("kl_cov").traits["step_pass"](StepTokens(old_logp=old[3:], adv=adv[3:]), s)
    assert alone["threshold"].item() != pytest.approx(stats["threshold"].item())


# ------------------------------------------------------------------------------------------------- REINFORCE++

def test_reinforce_pp_baseline_by_hand(fork):
    # groups {0: [1, 0], 1: [1, 1, 0, 0]}: centred [0.5, −0.5, 0.5, 0.5, −0.5, −0.5], mean 0, std (n − 1) =
    # sqrt(6 × 0.25 / 5) = sqrt(0.3) -> ±0.5 / (sqrt(0.3) + 1e-6); a group's mean is not a batch std
    rewards, groups = _t([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 7, 7, 7, 7])
    settings = ADVANTAGES.entry("reinforce_pp_baseline").settings()
    out = ADVANTAGES["reinforce_pp_baseline"](rewards_B=rewards, group_B=groups, settings=settings)
    a = 0.5 / (math.sqrt(0.3) + 1e-6)
    torch.testing.assert_close(out, _t([a, -a, a, a, -a, -a]))
    assert ADVANTAGES["reinforce_pp_baseline"](rewards_B=_t([1.0]), group_B=torch.tensor([0]),
                                               settings=settings).tolist() == [0.0]


# ------------------------------------------------------------------------------------------------- reward, tool

def test_brevity_reward_is_built_from_its_section(fork):
    from engine.config import Config, build_config

    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=[
        "--reward.weights", '{"accuracy": 1.0, "brevity": 1.0}', "--reward.brevity.max_words", "2",
        "--reward.brevity.scale", "0.5"])
    fn = reward_fn("brevity", cfg.reward.components)
    # "one two three four" is 2 words over the limit: −0.5 × 2
    assert fn("<answer>one two three four</answer>", None, RewardContext()) == -1.0
    assert fn("<answer>short</answer>", None, RewardContext()) == 0.0
    assert fn("no answer block at all here", None, RewardContext()) == -2.0  # the whole response: 6 words, 4 over


def test_threshold_tool_runs_and_is_described(fork):
    from PIL import Image

    from tools.schema import tool_schema

    image = Image.new("RGB", (64, 64), (200, 200, 200))
    assert call_tool("threshold", {"level": 128}, image).image.getpixel((0, 0)) == 255
    assert call_tool("threshold", {"level": 300}, image).error == "threshold: level must be a number from 0 to " \
                                                                   "255, got 300"
    schema = tool_schema("threshold")["function"]
    assert schema["parameters"]["properties"]["level"]["type"] == "number"
    assert schema["description"] == "Turn the image black and white at a grey level (0 to 255)."


# ------------------------------------------------------------------------------------------------- the command line

def _train(*args, cwd=ROOT):
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.parametrize("flags, message", [
    (["--algo.kl_cov.ratio", "0.01"], r"^config error: \[algo.kl_cov\] is set but algo.loss is 'ppo_clip'"),
    (["--algo.loss", "kl_cov", "--algo.num_updates", "2", "--algo.kl_cov.ratio", "lots"],
     r"^config error: --algo.kl_cov.ratio: expected float, got 'lots'"),
    (["--algo.loss", "kl_cov", "--algo.num_updates", "2", "--algo.kl_cov.ratio", "2"],
     r"^config error: algo.kl_cov.ratio = 2.0 is out of range: must be > 0 and <= 1"),
    (["--algo.loss", "kl_cov"], r"^config error: algo.loss = kl_cov needs algo.num_updates >= 2"),
    (["--algo.loss", "kl_kov"], r"^config error: algo.loss = 'kl_kov' is unknown; choose one of .*kl_cov"),
    (["--reward.brevity.scale", "1"], r"^config error: \[reward.brevity\] is set but reward.weights does not"),
])
def test_bad_settings_of_a_plugin_fail_at_parse_time_in_one_line(fork_file, tmp_path, flags, message):
    out = tmp_path / "run"
    r = _train("--config", str(ROOT / "configs/demo.toml"), "--plugin", str(fork_file), "--train.out_dir", str(out),
               *flags)
    assert r.returncode == 2 and re.search(message, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()  # one line; no run folder


def test_an_unknown_plugin_fails_at_parse_time_in_one_line(tmp_path):
    r = _train("--config", str(ROOT / "configs/demo.toml"), "--plugin", "no_such_fork", "--train.out_dir",
               str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.strip() == ("config error: plugin no_such_fork: no module named "
                                                      "'no_such_fork' (give a path to a .py file, or put the module "
                                                      "on PYTHONPATH)")


def test_help_config_lists_the_plugins_names_and_sections(fork_file):
    r = _train("--plugin", str(fork_file), "--help-config")
    assert r.returncode == 0
    assert re.search(r"choices: .*kl_cov \(from plugin_my_fork_\w+\)", r.stdout)
    assert "[algo.kl_cov]" in r.stdout and "--algo.kl_cov.ratio: float = 0.002  (> 0 and <= 1)" in r.stdout
    assert "[reward.brevity]" in r.stdout and "[algo.reinforce_pp_baseline]" in r.stdout


FORK_RUN = ["--train.stage", "rl", "--rl.steps", "2", "--rollout.prompts_per_step", "2", "--rollout.group_size", "4",
            "--rollout.max_new_tokens", "12", "--train.sample_every", "0", "--train.tensorboard", "false",
            "--algo.loss", "kl_cov", "--algo.num_updates", "2", "--algo.kl_cov.ratio", "0.05",
            "--algo.advantage", "reinforce_pp_baseline",
            "--reward.weights", '{"format": 0.2, "accuracy": 1.0, "brevity": 1.0}', "--reward.brevity.max_words", "1",
            "--rollout.protocol", "inline", "--rollout.tools", '["crop", "threshold"]']


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    out = tmp_path_factory.mktemp("colors")
    write_dataset("colors", 8, str(out), seed=3)
    return out / "data.jsonl"


def _check_fork_run(out: Path, fork_file: Path) -> None:
    rows = [r for r in map(json.loads, open(out / "metrics.jsonl")) if "reward/total" in r]
    # ratio 0.05 of the step's tokens, at most (ties and tokens with no positive covariance are not penalised)
    assert len(rows) == 2 and all(0 < r["train/kl_cov_frac"] <= 0.06 and "reward/brevity" in r for r in rows)
    config = (out / "config.toml").read_text()
    assert f'plugins = ["{fork_file.resolve()}"]' in config
    assert "[algo.kl_cov]" in config and "[algo.reinforce_pp_baseline]" in config and "[reward.brevity]" in config


@pytest.mark.slow
def test_the_fork_trains_the_demo_preset_from_outside_the_repository(fork_file, colors, tmp_path):
    out = tmp_path / "run"  # run from the plugin's own folder: nothing of the repository's is in the way
    r = _train("--config", str(ROOT / "configs/demo.toml"), "--plugin", fork_file.name, "--data.train", str(colors),
               "--data.eval", "", "--train.out_dir", str(out), *FORK_RUN, cwd=fork_file.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_fork_run(out, fork_file)


@pytest.mark.slow
def test_the_fork_trains_under_a_2_process_torchrun(fork_file, colors, tmp_path):
    out = tmp_path / "run"
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(_free_port()), str(ROOT / "train.py"),
                        "--config", str(ROOT / "configs/demo.toml"), "--plugin", str(fork_file), "--data.train",
                        str(colors), "--data.eval", "", "--train.out_dir", str(out), *FORK_RUN],
                       cwd=fork_file.parent, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_fork_run(out, fork_file)


@pytest.mark.slow
def test_the_forks_step_on_two_processes_equals_one(fork_file, fork, tmp_path):
    """Fixed trajectories (tests/dist_rl_worker.py): KL-Cov's step pass sees every rank's tokens and REINFORCE++'s
    std every rank's rewards, so the 2-process step's metrics equal the 1-process step's."""
    from engine.runtime import distributed as D
    from tests.dist_rl_worker import run
    from tests.test_train_distributed import _torchrun

    _torchrun("tests/dist_rl_worker.py", str(tmp_path), str(fork_file))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    ref = run(D.Dist(), str(fork_file))["plugin"]
    for step in range(2):
        want, got = ref[step], r0["plugin"][step]
        assert got == r1["plugin"][step] | {"local_trajectories": got["local_trajectories"]}
        for k in want:
            if not k.startswith(("time/", "throughput/")) and k != "local_trajectories":
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (step, k)
    assert 0 < ref[0]["train/kl_cov_frac"] < 1 and ref[1]["adv/abs_max"] > 0
