"""Loss math: hand-worked values for every surrogate, KL estimator, TIS weight and aggregation; gradients
against independent formulas; micro-batched == full batch; packed == flat; NaN in padding stays out."""

import math

import pytest
import torch

from engine.algo.losses import (
    ClipRange,
    GSPOSettings,
    LossInputs,
    NormLenSettings,
    PPOClipSettings,
    add_kl,
    aggregate,
    tis_weight,
    token_metric_means,
)
from engine.config.registries import AGGREGATIONS, KL_ESTIMATORS, LOSSES

F64 = torch.float64


def run_loss(name: str, *, s=None, **tensors):
    """LOSSES[name] on one LossInputs made of the keyword tensors (the contract's field names), with its settings
    (its defaults when s is None), and its metrics reduced as the step reduces them (means over the loss tokens)."""
    entry = LOSSES.entry(name)
    if s is None and entry.settings is not None:
        s = entry.settings()
    x = LossInputs(**tensors)
    loss, metrics = entry.fn(x, s)
    return loss, token_metric_means(metrics, x.mask)


def wide(name):
    """Settings of `name` with the PPO ranges [0.8, 1.28] (a loss without settings: None)."""
    cls = LOSSES.entry(name).settings
    return None if cls is None else cls(clip_low=0.2, clip_high=0.28)


NAN, INF = float("nan"), float("inf")

# The shared hand example: 2 sequences, 5 loss tokens, 1 padding token holding NaN/-inf garbage.
#   seq 0 = tokens 0..2 with A = +1, seq 1 = tokens 3..4 with A = −1, token 5 = padding of seq 1.
#   ρ = exp(logp − old_logp) = [1.5, 0.5, 1.0, 0.5, 4.0] on the loss tokens.
RHO = [1.5, 0.5, 1.0, 0.5, 4.0]
OLD = [-1.0, -2.0, -0.5, -1.5, -3.0]


def hand_example(requires_grad=True):
    logp = torch.tensor([o + math.log(r) for o, r in zip(OLD, RHO)] + [NAN], dtype=F64, requires_grad=requires_grad)
    return dict(
        logp=logp,
        old_logp=torch.tensor(OLD + [-INF], dtype=F64),
        adv=torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, NAN], dtype=F64),
        mask=torch.tensor([1.0, 1, 1, 1, 1, 0], dtype=F64),
        seq_idx=torch.tensor([0, 0, 0, 1, 1, 1]),
        num_seqs=2,
    )


def grad_of_sum(per_token, logp, mask):
    """d/dlogp of Σ over loss tokens of the per-token loss (aggregation left out: it only scales)."""
    (g,) = torch.autograd.grad(torch.where(mask > 0, per_token, 0.0).sum(), logp)
    return g


def t(values):
    return torch.tensor(values, dtype=F64)


# ------------------------------------------------------------------------------------------------- ppo_clip


def test_ppo_clip_hand_values_and_grads():
    # clip_low 0.2, clip_high 0.28: clip range [0.8, 1.28]. Per token −min(ρA, clip(ρ)A):
    #   t0 ρ=1.5 A=+1: min(1.5, 1.28)   = 1.28  → −1.28   (high clip active: gradient 0)
    #   t1 ρ=0.5 A=+1: min(0.5, 0.8)    = 0.5   → −0.5    (low bound does not bind for A>0: grad −ρA = −0.5)
    #   t2 ρ=1.0 A=+1: min(1.0, 1.0)    = 1.0   → −1.0    (grad −ρA = −1.0)
    #   t3 ρ=0.5 A=−1: min(−0.5, −0.8)  = −0.8  → +0.8    (low clip active: gradient 0)
    #   t4 ρ=4.0 A=−1: min(−4.0, −1.28) = −4.0  → +4.0    (unclipped for A<0: grad −ρA = +4.0)
    #   t5 padding → 0, gradient 0.
    ex = hand_example()
    loss, m = run_loss("ppo_clip", **ex, s=PPOClipSettings(clip_low=0.2, clip_high=0.28))
    torch.testing.assert_close(loss, t([-1.28, -0.5, -1.0, 0.8, 4.0, 0.0]))
    torch.testing.assert_close(grad_of_sum(loss, ex["logp"], ex["mask"]), t([0.0, -0.5, -1.0, 0.0, 4.0, 0.0]))
    # Metrics: 2 of 5 tokens clipped (one each side); ratio mean (1.5+0.5+1+0.5+4)/5 = 1.5, max 4;
    # approx_kl = mean(old − logp) = −mean(log ρ) = −log(1.5·0.5·1·0.5·4)/5 = −log(1.5)/5.
    expected = dict(clip_frac=0.4, clip_frac_high=0.2, clip_frac_low=0.2, dual_clip_frac=0.0, ratio_mean=1.5,
                    ratio_max=4.0, approx_kl=-math.log(1.5) / 5)
    assert {k: pytest.approx(v.item(), abs=1e-6) for k, v in m.items()} == expected


def test_ppo_clip_dual_clip():
    # Dual clip c = 3 caps the A<0 tokens at −c·A = 3: t4's 4.0 → min(4.0, 3.0) = 3.0 with gradient 0;
    # t3's 0.8 < 3 is unchanged; A>0 tokens are never touched.
    ex = hand_example()
    loss, m = run_loss("ppo_clip", **ex, s=PPOClipSettings(clip_low=0.2, clip_high=0.28, dual_clip_c=3.0))
    torch.testing.assert_close(loss, t([-1.28, -0.5, -1.0, 0.8, 3.0, 0.0]))
    torch.testing.assert_close(grad_of_sum(loss, ex["logp"], ex["mask"]), t([0.0, -0.5, -1.0, 0.0, 0.0, 0.0]))
    assert m["dual_clip_frac"].item() == pytest.approx(0.2)


@pytest.mark.parametrize("dual", [None, 3.0])
def test_ppo_clip_grads_match_independent_formulas(dual):
    # Random tokens; ρ spread over ~[0.2, 5] so every branch is hit. Two independent references:
    #  (1) verl's formula written out: max(−Aρ, −A·clip(ρ)), then for A<0 min(·, −cA), differentiated by autograd;
    #  (2) the analytic gradient: −Aρ on tokens where no clip is active, 0 where one is.
    gen = torch.Generator().manual_seed(0)
    n = 400
    old = -torch.rand(n, generator=gen, dtype=F64) * 3
    log_ratio = torch.randn(n, generator=gen, dtype=F64) * 0.6
    logp = (old + log_ratio).requires_grad_(True)
    a = torch.randn(n, generator=gen, dtype=F64)
    mask = (torch.rand(n, generator=gen) < 0.8).to(F64)
    s = PPOClipSettings(clip_low=0.2, clip_high=0.28, dual_clip_c=dual)
    loss, _ = run_loss("ppo_clip", logp=logp, old_logp=old, adv=a, mask=mask, seq_idx=torch.zeros(n, dtype=torch.long),
                       num_seqs=1, s=s)
    got = grad_of_sum(loss, logp, mask)

    rho = torch.exp(logp - old)
    ref = torch.maximum(-a * rho, -a * rho.clamp(0.8, 1.28))
    if dual is not None:
        ref = torch.where(a < 0, torch.minimum(ref, -dual * a), ref)
    torch.testing.assert_close(loss[mask > 0], ref[mask > 0])
    torch.testing.assert_close(got, grad_of_sum(ref, logp, mask))

    r = rho.detach()
    clipped = ((a > 0) & (r > 1.28)) | ((a < 0) & (r < 0.8))
    if dual is not None:
        clipped |= (a < 0) & (r > dual)
    analytic = torch.where(clipped | (mask == 0), 0.0, -a * r)
    torch.testing.assert_close(got, analytic)
    assert clipped[mask > 0].any() and (~clipped[mask > 0]).any()  # both branches really exercised


def test_ppo_clip_log_ratio_clamped_no_inf():
    # log ρ = 100 would give exp(100) ≈ 2.7e43 (inf in fp32); clamped to exp(20) ≈ 4.85e8, finite.
    z = torch.zeros(1)
    loss, m = run_loss("ppo_clip", logp=z + 100, old_logp=z, adv=z - 1, mask=z + 1, seq_idx=z.long(), num_seqs=1,
                       s=PPOClipSettings(clip_high=0.2))
    assert loss.item() == pytest.approx(math.exp(20), rel=1e-6) and torch.isfinite(m["ratio_max"])


# ------------------------------------------------------------------------------------------------- is_pg


def test_is_pg_hand_values_and_grads():
    # −ρA with no clipping: [−1.5, −0.5, −1.0, +0.5, +4.0]; d(−ρA)/dlogp = −ρA, the same numbers.
    ex = hand_example()
    loss, m = run_loss("is_pg", **ex)
    want = t([-1.5, -0.5, -1.0, 0.5, 4.0, 0.0])
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(grad_of_sum(loss, ex["logp"], ex["mask"]), want)
    assert m["ratio_mean"].item() == pytest.approx(1.5)


# ------------------------------------------------------------------------------------------------- gspo

# GSPO example: per-token log ratios seq 0 = [0.3, −0.1, 0.1] (mean 0.1), seq 1 = [0.2, −0.6] (mean −0.2),
# A = +1 on seq 0 and −0.5 on seq 1, padding token of seq 1 with garbage.
#   s_0 = exp(0.1) = 1.1051709, s_1 = exp(−0.2) = 0.8187308.
GSPO_LR = [0.3, -0.1, 0.1, 0.2, -0.6]


def gspo_example(log_ratios):
    ex = hand_example()
    logp = torch.tensor([o + lr for o, lr in zip(OLD, log_ratios)] + [NAN], dtype=F64, requires_grad=True)
    return {**ex, "logp": logp, "adv": t([1.0, 1.0, 1.0, -0.5, -0.5, NAN])}


def test_gspo_value_is_sequence_ratio_and_grad_is_sequence_level():
    ex = gspo_example(GSPO_LR)
    s0, s1 = math.exp(0.1), math.exp(-0.2)
    # Wide clip [0.8, 1.2]: neither sequence is clipped, so per token −s_i·A_i = [−1.1051709]×3, [+0.4093654]×2.
    loss, m = run_loss("gspo", **ex, s=GSPOSettings(clip_low=0.2, clip_high=0.2))
    torch.testing.assert_close(loss, t([-s0, -s0, -s0, 0.5 * s1, 0.5 * s1, 0.0]))
    # The ratio the surrogate used is s_i on every token: loss / (−A) = s_i.
    torch.testing.assert_close((loss / -ex["adv"])[:5], t([s0, s0, s0, s1, s1]))
    # Per token the gradient is −s_i·A_i (through that token's own logp only). Under seq_mean_token_mean with
    # num_seqs = 2 it becomes −s_i·A_i / (len_i · 2): seq 0 −1.1051709/6, seq 1 +0.4093654/4.
    total = aggregate(loss, mask=ex["mask"], seq_idx=ex["seq_idx"], mode="seq_mean_token_mean", num_tokens=5,
                      num_seqs=2)
    (g,) = torch.autograd.grad(total, ex["logp"])
    want = t([-s0 / 6] * 3 + [0.5 * s1 / 4] * 2 + [0.0])
    torch.testing.assert_close(g, want)
    # ... which is the paper's sequence-level objective −(1/2) Σ_i A_i·s_i(θ), s_i NOT detached, by autograd.
    logp = ex["logp"].detach()[:5].clone().requires_grad_(True)
    lr = logp - ex["old_logp"][:5]
    paper = -(1.0 * torch.exp(lr[:3].mean()) - 0.5 * torch.exp(lr[3:].mean())) / 2
    (g_paper,) = torch.autograd.grad(paper, logp)
    torch.testing.assert_close(g[:5], g_paper)
    assert m["clip_frac"].item() == 0.0


def test_gspo_narrow_clip():
    # GSPO-sized ranges clip_low 3e-4, clip_high 4e-4 → [0.9997, 1.0004]. seq 0 as above (s_0 = 1.105 > 1.0004
    # with A>0: clipped, loss −1.0004·1, no gradient); seq 1 log ratios [3e-4, −1e-4] (mean 1e-4, s_1 =
    # exp(1e-4) = 1.000100005 inside the range: unclipped, loss −s_1·(−0.5), gradient −s_1·A = +0.5·s_1).
    ex = gspo_example(GSPO_LR[:3] + [3e-4, -1e-4])
    loss, m = run_loss("gspo", **ex)  # its defaults are the paper's ranges
    s1 = math.exp(1e-4)
    torch.testing.assert_close(loss, t([-1.0004] * 3 + [0.5 * s1] * 2 + [0.0]))
    torch.testing.assert_close(grad_of_sum(loss, ex["logp"], ex["mask"]), t([0.0] * 3 + [0.5 * s1] * 2 + [0.0]))
    assert m["clip_frac"].item() == pytest.approx(0.6)


# ------------------------------------------------------------------------------------------------- cispo


def test_cispo_hand_values_grads_and_stop_gradient():
    # clip(ρ, 0.8, 1.28) = [1.28, 0.8, 1.0, 0.8, 1.28]; loss −w·A·logp; gradient −w·A on EVERY token:
    #   [−1.28, −0.8, −1.0, +0.8, +1.28] (t0 and t3 are clipped yet keep a gradient, unlike ppo_clip).
    ex = hand_example()
    ex["old_logp"].requires_grad_(True)
    w = t([1.28, 0.8, 1.0, 0.8, 1.28])
    loss, m = run_loss("cispo", **ex, s=ClipRange(clip_low=0.2, clip_high=0.28))
    a, logp = ex["adv"][:5], ex["logp"].detach()[:5]
    torch.testing.assert_close(loss[:5], -w * a * logp)
    assert loss[5].item() == 0.0
    total = torch.where(ex["mask"] > 0, loss, 0.0).sum()
    g_logp, g_old = torch.autograd.grad(total, [ex["logp"], ex["old_logp"]], allow_unused=True)
    torch.testing.assert_close(g_logp, t([-1.28, -0.8, -1.0, 0.8, 1.28, 0.0]))
    assert g_old is None  # no gradient reaches old_logp: the ratio is stop-gradient
    assert m["clip_frac"].item() == pytest.approx(0.8)  # t0, t1, t3, t4 are outside [0.8, 1.28]


# ------------------------------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values():
    # logp − ref = [0, −1, 1.5]; x = ref − logp = [0, 1, −1.5].
    #   k1 = [0, −1, 1.5]; k2 = ½d² = [0, 0.5, 1.125];
    #   k3 = eˣ − x − 1 = [0, e − 2 = 0.7182818, e^−1.5 + 0.5 = 0.7231302].
    logp, ref = t([-1.0, -2.0, -0.5]), t([-1.0, -1.0, -2.0])
    torch.testing.assert_close(KL_ESTIMATORS["k1"](logp=logp, ref_logp=ref), t([0.0, -1.0, 1.5]))
    torch.testing.assert_close(KL_ESTIMATORS["k2"](logp=logp, ref_logp=ref), t([0.0, 0.5, 1.125]))
    torch.testing.assert_close(KL_ESTIMATORS["k3"](logp=logp, ref_logp=ref), t([0.0, math.e - 2, math.exp(-1.5) + 0.5]))


def test_k3_clamped_and_nonnegative():
    # x = ref − logp = 25 → clamped to 20 → e²⁰ − 21 → value clamped to 10; x = −30 → −20 → e⁻²⁰ + 19 → 10.
    out = KL_ESTIMATORS["k3"](logp=t([0.0, 0.0]), ref_logp=t([25.0, -30.0]))
    torch.testing.assert_close(out, t([10.0, 10.0]))
    gen = torch.Generator().manual_seed(1)
    logp, ref = torch.randn(1000, generator=gen) * 5, torch.randn(1000, generator=gen) * 5
    assert (KL_ESTIMATORS["k3"](logp=logp, ref_logp=ref) >= 0).all()


def test_add_kl():
    # β = 0.1 with k2 on the hand example's first 2 tokens: loss + 0.1·[0, 0.5] = [1.0, 2.05]; kl metric 0.25.
    loss = t([1.0, 2.0, 3.0])
    mask = t([1.0, 1.0, 0.0])
    out, m = add_kl(loss, logp=t([-1.0, -2.0, NAN]), ref_logp=t([-1.0, -1.0, NAN]), mask=mask, beta=0.1,
                    estimator="k2")
    torch.testing.assert_close(out[:2], t([1.0, 2.05]))
    assert token_metric_means(m, mask)["kl"].item() == pytest.approx(0.25) and torch.isfinite(out).all()
    # β = 0 needs no reference model.
    same, m0 = add_kl(loss, logp=t([0.0] * 3), ref_logp=None, mask=mask, beta=0.0, estimator="k3")
    assert same is loss and m0 == {}
    with pytest.raises(ValueError, match="ref_logp"):
        add_kl(loss, logp=t([0.0] * 3), ref_logp=None, mask=mask, beta=0.1, estimator="k3")
    with pytest.raises(ValueError, match="unknown"):
        add_kl(loss, logp=t([0.0] * 3), ref_logp=None, mask=mask, beta=0.0, estimator="k4")


# ------------------------------------------------------------------------------------------------- TIS


def test_tis_weight_cap():
    # old − sampler = [log 1.5, log 3, −log 2, +inf] with cap 2 → [1.5, min(3, 2), 0.5, 2]; padding → 1.
    old = t([math.log(1.5), math.log(3.0), -math.log(2.0), 0.0, NAN]).requires_grad_(True)
    sampler = t([0.0, 0.0, 0.0, -INF, NAN])
    w = tis_weight(old_logp=old, sampler_logp=sampler, mask=t([1.0, 1, 1, 1, 0]), cap=2.0)
    torch.testing.assert_close(w, t([1.5, 2.0, 0.5, 2.0, 1.0]))
    assert not w.requires_grad  # detached
    with pytest.raises(ValueError, match="cap"):
        tis_weight(old_logp=old, sampler_logp=sampler, mask=t([1.0] * 5), cap=0.0)


# ------------------------------------------------------------------------------------------------- aggregation

# L = [1, 2, 3 | 4, 5, NaN(pad)], seq 0 = 3 tokens, seq 1 = 2 tokens:
#   token_mean              = (1+2+3+4+5) / 5                 = 3
#   seq_mean_token_mean     = ((1+2+3)/3 + (4+5)/2) / 2       = (2 + 4.5) / 2 = 3.25
#   seq_mean_token_sum_norm = 15 / (2 seqs · norm_len 4)      = 1.875
AGG_EXPECTED = {"token_mean": 3.0, "seq_mean_token_mean": 3.25, "seq_mean_token_sum_norm": 1.875}


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("packed", [False, True])
def test_aggregate_hand_values(mode, packed):
    loss = t([1.0, 2, 3, 4, 5, NAN]).requires_grad_(True)
    mask, seq_idx = t([1.0, 1, 1, 1, 1, 0]), torch.tensor([0, 0, 0, 1, 1, 1])
    shape = (2, 3) if packed else (6,)  # packed rows [1, 2, 3], [4, 5, pad]
    out = aggregate(loss.reshape(shape), mask=mask.reshape(shape), seq_idx=seq_idx.reshape(shape), mode=mode,
                    num_tokens=5, num_seqs=2, default_len=4)
    assert out.item() == pytest.approx(AGG_EXPECTED[mode])
    (g,) = torch.autograd.grad(out, loss)
    assert torch.isfinite(g).all() and g[5].item() == 0.0


def test_aggregate_rejects_bad_input():
    x = t([1.0])
    kw = dict(mask=x, seq_idx=torch.zeros(1, dtype=torch.long), num_tokens=1, num_seqs=1)
    with pytest.raises(ValueError, match="unknown"):
        aggregate(x, mode="sum", **kw)
    with pytest.raises(ValueError, match="norm_len"):
        aggregate(x, mode="seq_mean_token_sum_norm", **kw)
    with pytest.raises(ValueError, match="num_tokens"):
        aggregate(x, mode="token_mean", **{**kw, "num_tokens": 0})


# ------------------------------------------------------------------------------------------------- equivalences

LENGTHS = [3, 5, 2, 4]  # 4 sequences, padded to width 6


def random_batch(seed):
    """Padded [4, 6] batch, float32, with NaN/-inf garbage in the padding and A constant per sequence."""
    gen = torch.Generator().manual_seed(seed)
    num_seqs, width = len(LENGTHS), 6
    mask = (torch.arange(width) < torch.tensor(LENGTHS)[:, None]).float()
    old = -torch.rand(num_seqs, width, generator=gen) * 3
    logp = old + torch.randn(num_seqs, width, generator=gen) * 0.3
    ref = old + torch.randn(num_seqs, width, generator=gen) * 0.3
    sampler = old + torch.randn(num_seqs, width, generator=gen) * 0.3
    adv = torch.randn(num_seqs, 1, generator=gen).expand(num_seqs, width).clone()
    for x in (logp, old, adv, ref, sampler):
        x[mask == 0] = NAN
    old[mask == 0] = -INF
    return dict(logp=logp, old_logp=old, adv=adv, ref_logp=ref, sampler_logp=sampler, mask=mask)


def full_loss(b, *, name, mode, num_tokens, num_seqs, seq_idx):
    """The whole micro-batch pipeline: surrogate → TIS → KL → aggregate."""
    per_token, _ = run_loss(name, logp=b["logp"], old_logp=b["old_logp"], adv=b["adv"], mask=b["mask"], seq_idx=seq_idx,
                            num_seqs=num_seqs, s=wide(name))
    per_token = per_token * tis_weight(old_logp=b["old_logp"], sampler_logp=b["sampler_logp"], mask=b["mask"], cap=2.0)
    per_token, _ = add_kl(per_token, logp=b["logp"], ref_logp=b["ref_logp"], mask=b["mask"], beta=0.05, estimator="k3")
    return aggregate(per_token, mask=b["mask"], seq_idx=seq_idx, mode=mode, num_tokens=num_tokens, num_seqs=num_seqs,
                     default_len=8)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_micro_batched_equals_full_batch(name, mode):
    # 4 whole sequences; full batch vs 2 micro-batches of 2 sequences each with LOCAL seq_idx (0, 1) and the
    # GLOBAL counts (14 tokens, 4 sequences). Sum of micro-batch losses and accumulated grads must match.
    b = random_batch(seed=2)
    num_tokens = int(b["mask"].sum())
    assert num_tokens == 14
    row_idx = torch.arange(4)[:, None].expand(4, 6)

    logp_full = b["logp"].clone().requires_grad_(True)
    full = full_loss({**b, "logp": logp_full}, name=name, mode=mode, num_tokens=num_tokens, num_seqs=4,
                     seq_idx=row_idx)
    full.backward()

    logp_micro = b["logp"].clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 2), slice(2, 4)):
        mb = {k: v[rows] for k, v in b.items()}
        mb["logp"] = logp_micro[rows]
        part = full_loss(mb, name=name, mode=mode, num_tokens=num_tokens, num_seqs=4,
                         seq_idx=row_idx[rows] - rows.start)  # local indices 0, 1
        part.backward()
        total = total + part.detach()

    assert torch.isfinite(full) and torch.isfinite(logp_full.grad).all()
    torch.testing.assert_close(total, full.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(logp_micro.grad, logp_full.grad, atol=1e-6, rtol=0)
    assert logp_full.grad.abs().sum() > 0 and (logp_full.grad[b["mask"] == 0] == 0).all()


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_packed_equals_flat(name, mode):
    # The same 4 sequences laid out flat [14] (concatenated) and packed into rows [2, 8]:
    #   row 0 = seq 0 (3) + seq 1 (5); row 1 = seq 2 (2) + seq 3 (4) + 2 padding. Same losses and grads.
    b = random_batch(seed=3)
    keep = b["mask"] > 0
    flat = {k: v[keep] for k, v in b.items()}  # row-major: seq 0, 1, 2, 3
    flat_seq = torch.arange(4)[:, None].expand(4, 6)[keep]
    # packed position -> flat position (−1 = padding)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, -1, -1]])
    packed_seq = torch.where(pos >= 0, flat_seq[pos.clamp(min=0)], 3)

    logp = flat["logp"].clone().requires_grad_(True)
    out_flat = full_loss({**flat, "logp": logp}, name=name, mode=mode, num_tokens=14, num_seqs=4,
                         seq_idx=flat_seq)
    (g_flat,) = torch.autograd.grad(out_flat, logp)

    packed = {k: torch.where(pos >= 0, v[pos.clamp(min=0)], NAN) for k, v in flat.items()}
    packed["mask"] = (pos >= 0).float()
    logp = flat["logp"].clone().requires_grad_(True)
    packed["logp"] = torch.where(pos >= 0, logp[pos.clamp(min=0)], NAN)
    out_packed = full_loss(packed, name=name, mode=mode, num_tokens=14, num_seqs=4, seq_idx=packed_seq)
    (g_packed,) = torch.autograd.grad(out_packed, logp)

    torch.testing.assert_close(out_packed, out_flat, atol=1e-6, rtol=0)
    torch.testing.assert_close(g_packed, g_flat, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------- contracts


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_nan_in_padding_never_leaks_and_metrics_are_detached(name):
    # hand_example() holds NaN logp, −inf old_logp and NaN advantage in its padding token.
    ex = hand_example()
    loss, metrics = run_loss(name, **ex)
    assert torch.isfinite(loss).all()
    for mode in AGGREGATIONS:
        out = aggregate(loss, mask=ex["mask"], seq_idx=ex["seq_idx"], mode=mode, num_tokens=5, num_seqs=2,
                        default_len=4)
        (g,) = torch.autograd.grad(out, ex["logp"], retain_graph=True)
        assert torch.isfinite(out) and torch.isfinite(g).all() and g[5].item() == 0.0
    assert metrics and all(not v.requires_grad and v.dim() == 0 and torch.isfinite(v) for v in metrics.values())
    raw = LOSSES[name](LossInputs(**ex), wide(name))[1]  # per-token metrics may hold anything in padding ...
    assert all(not v.requires_grad for v in raw.values())  # ... but never carry gradient


def test_loss_settings_are_their_own_sections_checked_at_parse_time():
    from engine.config import Config, build_config

    parse = lambda *flags: build_config(Config, overrides=list(flags))  # noqa: E731
    unknown = "choose one of " + ", ".join(LOSSES.names())  # read from the registry, never copied
    with pytest.raises(ValueError, match=f"algo.loss = 'ppo' is unknown; {unknown}"):
        parse("--algo.loss", "ppo")
    with pytest.raises(ValueError, match=r"\[algo.ppo_clip\] is set but algo.loss is 'cispo'"):
        parse("--algo.loss", "cispo", "--algo.ppo_clip.dual_clip_c", "3")  # cispo has no dual clip
    with pytest.raises(ValueError, match="algo.ppo_clip.dual_clip_c = 1.0 is out of range: must be > 1"):
        parse("--algo.ppo_clip.dual_clip_c", "1")
    with pytest.raises(ValueError, match=r"\[algo.seq_mean_token_sum_norm\] is set but algo.aggregation"):
        parse("--algo.seq_mean_token_sum_norm.norm_len", "512")  # would silently do nothing under token_mean
    with pytest.raises(ValueError, match="algo.tis_cap = 0.0 is out of range"):
        parse("--algo.tis_cap", "0")  # off is none, not 0
    with pytest.raises(ValueError, match="algo.clip_high moved to algo.<loss>.clip_high"):
        parse("--algo.clip_high", "0.2")
    cfg = parse("--algo.aggregation", "seq_mean_token_sum_norm", "--algo.seq_mean_token_sum_norm.norm_len", "512")
    assert cfg.algo.settings("seq_mean_token_sum_norm") == NormLenSettings(norm_len=512)
    assert parse("--algo.loss", "gspo").algo.settings("gspo") == GSPOSettings()  # selected: its defaults
    assert parse("--algo.loss", "is_pg").algo.settings("is_pg") is None  # no settings at all


def test_shape_mismatch_rejected():
    ex = hand_example()
    with pytest.raises(ValueError, match="one shape"):
        run_loss("ppo_clip", **{**ex, "adv": t([1.0, -1.0])})
