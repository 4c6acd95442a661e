"""Advantage estimators: hand-worked values, vectorised == looped reference, constant groups and lone samples."""

import math
import random

import pytest
import torch

from engine.algo.advantages import GRPOSettings
from engine.config.registries import ADVANTAGES


def _groups(rewards, groups):
    """{group id: [(index, reward)]}: the plain-Python grouping every reference below starts from."""
    out = {}
    for i, (r, g) in enumerate(zip(rewards, groups)):
        out.setdefault(g, []).append((i, r))
    return out.values()


def _group_relative(center):
    """A reference that gives each sample of a group `center(x, rs)`, and 0 to a group of one or of equal rewards."""
    def reference(rewards, groups, eps):
        out = [0.0] * len(rewards)
        for members in _groups(rewards, groups):
            rs = [r for _, r in members]
            if len(rs) > 1 and max(rs) != min(rs):  # no baseline / nothing to prefer: 0
                for i, x in members:
                    out[i] = center(x, rs, eps)
        return out
    return reference


def _std(rs):
    mean = sum(rs) / len(rs)
    return math.sqrt(sum((x - mean) ** 2 for x in rs) / (len(rs) - 1))


# Reference per built-in estimator, straight from its definition: a new estimator needs its own entry here (the
# check below fails until it has one); no name falls through to another's reference.
REFERENCE = {
    "grpo": _group_relative(lambda x, rs, eps: (x - sum(rs) / len(rs)) / (_std(rs) + eps)),
    "drgrpo": _group_relative(lambda x, rs, eps: x - sum(rs) / len(rs)),
    "rloo": _group_relative(lambda x, rs, eps: x - (sum(rs) - x) / (len(rs) - 1)),  # minus the mean of the others
}


def adv(name, rewards, groups, eps=1e-6, dtype=torch.float64):
    entry = ADVANTAGES.entry(name)
    settings = GRPOSettings(eps=eps) if entry.settings is GRPOSettings else None
    return entry.fn(rewards_B=torch.tensor(rewards, dtype=dtype), group_B=torch.tensor(groups, dtype=torch.long),
                    settings=settings)


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_every_built_in_estimator_has_its_own_reference(name):
    assert name in REFERENCE, f"estimator {name!r} has no reference in tests/test_advantages.py REFERENCE: add one"


def test_hand_values_one_group():
    # Rewards [1, 0, 0, 1]: mean 0.5; Bessel std = sqrt((4 × 0.25) / 3) = sqrt(1/3) = 0.5773503.
    # grpo: ±0.5 / (0.5773503 + 1e-6) = ±0.8660239; drgrpo: ±0.5;
    # rloo: 1 − mean(0, 0, 1) = 2/3 and 0 − mean(1, 0, 1) = −2/3.
    r, g = [1.0, 0.0, 0.0, 1.0], [7, 7, 7, 7]
    s = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(adv("grpo", r, g), torch.tensor([s, -s, -s, s], dtype=torch.float64))
    torch.testing.assert_close(adv("drgrpo", r, g), torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(adv("rloo", r, g), torch.tensor([2, -2, -2, 2], dtype=torch.float64) / 3)


def test_eps_is_used_by_grpo():
    # Same group with eps = 1e-4 (TRL's): 0.5 / (0.5773503 + 1e-4) = 0.8658726, visibly not 0.8660239.
    out = adv("grpo", [1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0], eps=1e-4)
    assert out[0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-4), abs=1e-12)


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_vectorised_equals_looped_on_random_groups(name):
    rng = random.Random(0)
    for trial in range(20):
        # Unequal group sizes 1..7, arbitrary (negative, large, non-contiguous) ids, shuffled order, and a mix
        # of binary rewards (often constant groups) and continuous ones.
        ids = rng.sample([-5, 0, 3, 17, 1000, 2**40], k=rng.randint(1, 6))
        groups = [gid for gid in ids for _ in range(rng.randint(1, 7))]
        rng.shuffle(groups)
        binary = trial % 2 == 0
        rewards = [float(rng.random() < 0.5) if binary else rng.uniform(-2, 3) for _ in groups]
        got = adv(name, rewards, groups)
        want = torch.tensor(REFERENCE[name](rewards, groups, 1e-6), dtype=torch.float64)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_constant_group_is_exactly_zero(name):
    # 0.1 three times: the float mean (0.1 + 0.1 + 0.1) / 3 = 0.10000000000000002 != 0.1, so a naive
    # r − mean leaves a 1e-17 residue that grpo's 1/(0 + eps) would blow up to 1e-11. It must be exactly 0.
    assert (0.1 + 0.1 + 0.1) / 3 != 0.1
    out = adv(name, [0.1, 0.1, 0.1, 1.0, 0.0], [4, 4, 4, 9, 9])
    assert torch.equal(out[:3], torch.zeros(3, dtype=torch.float64))
    assert torch.isfinite(out).all() and out[3] > 0 > out[4]


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_group_of_one_is_zero(name):
    # Sequence 0 is alone in group 5 with reward 1.0 (verl's GRPO would return the raw 1.0; we follow TRL: 0).
    out = adv(name, [1.0, 0.0, 1.0], [5, 2, 2])
    assert out[0].item() == 0.0
    assert out[1] < 0 < out[2]


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_dtype_kept_and_bad_input_rejected(name):
    out = adv(name, [1.0, 0.0], [0, 0], dtype=torch.float32)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="integer group ids"):
        ADVANTAGES[name](rewards_B=torch.ones(2), group_B=torch.zeros(2), settings=None)
    with pytest.raises(ValueError, match="same length"):
        ADVANTAGES[name](rewards_B=torch.ones(3), group_B=torch.zeros(2, dtype=torch.long), settings=None)
