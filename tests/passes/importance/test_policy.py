"""The PruneNet policy criterion: the KS reward, learning on a case with a known answer, saving and reuse."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from graphprune.analysis.coupling import analyze  # noqa: E402
from graphprune.io.load import load_model  # noqa: E402
from graphprune.passes import make_plan  # noqa: E402
from graphprune.passes.importance.policy import PolicyNetwork, ks_statistic, layer_reward  # noqa: E402


def layers_with_dead_rows(seed: int = 0) -> list[np.ndarray]:
    """Every fourth row is 100x weaker: dropping exactly those keeps the singular spectrum."""
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(4):
        rows = rng.standard_normal((64, 16)).astype(np.float32)
        rows[::4] *= 0.01
        layers.append(rows)
    return layers


def weak_ranked_lowest(policy: PolicyNetwork, layers: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(np.argsort(policy.propensity(rows))[:16] % 4 == 0) for rows in layers]))


def test_ks_statistic():
    assert ks_statistic(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert ks_statistic(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0


def test_reward_prefers_dropping_the_weak_rows():
    rows = layers_with_dead_rows()[0]
    strong = np.array([i for i in range(64) if i % 4])
    random_keep = np.sort(np.random.default_rng(1).choice(64, 48, replace=False))
    assert layer_reward(rows, strong) > 3 * layer_reward(rows, random_keep)


def test_training_learns_the_known_answer(tmp_path):
    layers = layers_with_dead_rows()
    policy = PolicyNetwork(16, seed=0)
    assert weak_ranked_lowest(policy, layers) == 0.0  # this seed starts with the opposite ranking
    policy.train(layers, seed=0)  # 20 episodes, AdamW lr 1e-3 (the paper's settings)
    assert weak_ranked_lowest(policy, layers) == 1.0
    policy.save(tmp_path / "policy.pt")
    again = PolicyNetwork.load(tmp_path / "policy.pt")
    np.testing.assert_allclose(again.propensity(layers[0]), policy.propensity(layers[0]), rtol=1e-6)


def test_policy_criterion_on_swiglu_and_gelu_ffns(exported, tmp_path):
    for name in ("llama", "bert"):
        analysis = analyze(load_model(exported(name, True)))
        policy_file = tmp_path / f"{name}.pt"
        plan = make_plan(analysis, "policy", 0.3, options={"policy_file": str(policy_file)})
        neurons = [g for g in analysis.prunable() if g.kind == "neuron"]
        assert policy_file.exists() and all(g.id in plan.removed for g in neurons)
        reused = make_plan(analysis, "policy", 0.3, options={"policy_file": str(policy_file)})
        assert all(np.array_equal(plan.removed[g], reused.removed[g]) for g in plan.removed)
