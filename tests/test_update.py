"""engine/algo/update.py, the update SFT and RL share: rows' gradients accumulate to the one-batch gradient, metrics are
token-weighted, the norm is taken before clipping and the lr is the one the step used; `due` and the trainer's
periodic actions evaluate and save the final weights once (RL's eval_every used to evaluate them twice)."""

from types import SimpleNamespace

import pytest
import torch

from engine import run_checkpoints as ckpt
from engine.trainer import Run
from engine.algo.update import due, optimizer_update


def _linear():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))  # lr 0.5, then 0.25
    return model, opt, sched


def test_rows_accumulate_to_the_one_batch_gradient_and_metrics_are_token_weighted():
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 1.0, 1.0]])
    full_model, opt, sched = _linear()
    w0 = full_model.weight.detach().clone()
    # one batch: loss = mean over the 3 "tokens" of (w·x)
    full_model(x).mean().backward()
    expected_grad = full_model.weight.grad.clone()  # = mean of x rows = [4/3, 2/3, 1]

    model, opt, sched = _linear()
    rows = [x[:2], x[2:]]  # two micro-batch rows of 2 and 1 tokens, each normalised by the step's 3 tokens

    def row_loss(i, row):
        return model(row).sum() / 3, {"m": torch.tensor(float(i))}, len(row)

    out = optimizer_update(model, opt, sched, rows, len(rows), row_loss, max_grad_norm=0.0, scoring={})
    torch.testing.assert_close(out["grad_norm"], expected_grad.norm())  # 0: no clipping, the full norm
    torch.testing.assert_close(model.weight.detach(), w0 - 0.5 * expected_grad)  # SGD at the step's lr 0.5
    assert out["lr"].item() == 0.5 and sched.get_last_lr()[0] == 0.25  # lr reported is the one used
    assert not out["skipped"]
    assert out["tokens"] == 3 and out["sums"]["m"].item() == 0 * 2 + 1 * 1  # Σ metric × tokens
    torch.testing.assert_close(out["loss"], (w0 @ x.T).mean())


def test_clipping_scales_the_update_but_reports_the_raw_norm():
    model, opt, sched = _linear()
    w0 = model.weight.detach().clone()
    x = torch.tensor([[30.0, 40.0, 0.0]])  # gradient [30, 40, 0], norm 50

    def row_loss(i, row):
        return model(row).sum(), {}, 1

    out = optimizer_update(model, opt, sched, [x], 1, row_loss, max_grad_norm=1.0, scoring={})
    assert out["grad_norm"].item() == pytest.approx(50.0)
    torch.testing.assert_close(model.weight.detach(), w0 - 0.5 * torch.tensor([[0.6, 0.8, 0.0]]), atol=1e-5, rtol=0)


def test_a_nonfinite_loss_skips_the_update_and_the_schedule():
    model, opt, sched = _linear()
    w0 = model.weight.detach().clone()

    def row_loss(i, row):
        return model(row).sum() * float("nan"), {}, 1

    out = optimizer_update(model, opt, sched, [torch.ones(1, 3)], 1, row_loss, max_grad_norm=1.0, scoring={})
    assert out["skipped"] and torch.equal(model.weight.detach(), w0)
    assert sched.get_last_lr()[0] == 0.5  # nothing moves, the schedule included


@pytest.mark.parametrize("step, every, last, expected", [
    (2, 2, 4, True), (4, 2, 4, False),  # the last step is the stage end's
    (3, 2, 4, False), (1, 0, 4, False), (3, 1, 4, True),
])
def test_due(step, every, last, expected):
    assert due(step, every, last) is expected


def test_final_weights_are_evaluated_and_saved_once(monkeypatch):
    calls = []
    monkeypatch.setattr(ckpt, "save", lambda run, stage, step, *a: calls.append(("save", step)))
    fake = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(eval_every=2, save_every=2)),
                           summary={"done_stages": [], "steps": {}},
                           evaluate=lambda tag: calls.append(("eval", tag)))
    for stage in ("sft", "rl"):  # the same rule in both stages
        calls.clear()
        for done in range(1, 5):
            Run._periodic(fake, stage, done, 4, None, None, None)
        Run._finish_stage(fake, stage, 4, None, None, None)
        assert calls == [("eval", f"{stage}_step2"), ("save", 2), ("eval", f"after_{stage}"), ("save", 4)]
