"""PruneNet ("You Only Prune Once", ICLR 2025): a calibration-free learned policy for FFN neurons.

A policy shared by all layers maps each row of a neuron group's producer weights (the first FFN matrix;
gate and up rows side by side under SwiGLU, plus the row's log-norm) to a keep-propensity
α = sigmoid(v · tanh(A [w, log‖w‖] + b)). It is
trained with REINFORCE: per episode and layer, k rows are sampled without replacement (Gumbel top-k on
log α), several trajectories per episode with their mean return as baseline. The reward is
1 / KS(σ(W), σ(W_kept)), the inverse two-sample Kolmogorov-Smirnov distance between the singular-value
spectra; layers are time steps discounted by γ = 0.99. It depends on weights only and not on the ratio:
train once (optionally save to a file), prune at any ratio with deterministic top-k. Needs graphprune[torch].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphprune import progress
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group
from graphprune.analysis.weights import stored_weight
from graphprune.errors import GraphpruneError
from graphprune.passes.importance.registry import Criterion, register_criterion

EPISODES, GAMMA, LEARNING_RATE, HIDDEN, SAMPLES = 20, 0.99, 1e-3, 32, 8


def producer_rows(group: Group) -> np.ndarray | None:
    """[units, features]: each unit's producer weight slices (non-consumer 2-D params) side by side."""
    parts = []
    for member in group.param_members():
        weight = stored_weight(member.value)
        if member.consumer or weight is None or len(member.value.const_value.shape) != 2:
            continue
        array = weight.dense()
        rows = np.moveaxis(array, member.axis, 0).astype(np.float32)
        owned = member.unit_of >= 0
        if np.bincount(member.unit_of[owned], minlength=group.size).max() != 1:
            return None
        ordered = np.empty_like(rows[: group.size])
        ordered[member.unit_of[owned]] = rows[owned]
        parts.append(ordered)
    return np.concatenate(parts, axis=1) if parts else None


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a, cdf_b = np.searchsorted(a, grid, "right") / len(a), np.searchsorted(b, grid, "right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def layer_reward(rows: np.ndarray, kept: np.ndarray) -> float:
    full = np.linalg.svd(rows, compute_uv=False)
    part = np.linalg.svd(rows[kept], compute_uv=False)
    return 1.0 / (ks_statistic(full, part) + 1e-3)


class PolicyNetwork:
    """α(w) = sigmoid(v · tanh(A w + b)), shared by all layers of one model (one feature width)."""

    def __init__(self, features: int, seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)
        self.features = features
        self.net = torch.nn.Sequential(torch.nn.Linear(features + 1, HIDDEN), torch.nn.Tanh(),
                                       torch.nn.Linear(HIDDEN, 1))

    def logits(self, rows: np.ndarray):
        """Rows scaled to unit mean norm, plus each row's log-norm (which the paper's linear map cannot see)."""
        import torch

        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        scaled = rows / (norms.mean() + 1e-12)
        features = np.concatenate([scaled, np.log(norms / (norms.mean() + 1e-12) + 1e-6)], axis=1)
        return self.net(torch.from_numpy(features.astype(np.float32))).squeeze(-1)

    def propensity(self, rows: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return torch.sigmoid(self.logits(rows)).numpy()

    def train(self, layers: list[np.ndarray], episodes: int = EPISODES, seed: int = 0,
              samples: int = SAMPLES) -> list[float]:
        """REINFORCE: each episode samples `samples` trajectories (one keep set per layer, a shared ratio);
        a layer's advantage is its discounted return minus the mean over the trajectories. Returns each
        episode's mean reward."""
        import torch

        generator = np.random.default_rng(seed)
        optimiser = torch.optim.AdamW(self.net.parameters(), lr=LEARNING_RATE)
        history = []
        for _ in progress.iterate(range(episodes), "training the policy", "episode"):
            ratio = generator.uniform(0.1, 0.5)
            log_probs, rewards = [], np.zeros((samples, len(layers)))
            for index, rows in enumerate(layers):
                log_alpha = torch.nn.functional.logsigmoid(self.logits(rows))
                keep = max(1, int(np.floor(len(rows) * (1 - ratio))))
                for sample in range(samples):
                    gumbel = torch.from_numpy(-np.log(-np.log(generator.uniform(1e-9, 1, len(rows))))).float()
                    kept = torch.topk(log_alpha.detach() + gumbel, keep).indices
                    rewards[sample, index] = layer_reward(rows, kept.numpy())
                    log_probs.append((sample, index, log_alpha[kept].sum()))
            discounts = GAMMA ** np.arange(len(layers))
            returns = np.stack([[np.dot(r[t:], discounts[: len(layers) - t]) for t in range(len(layers))]
                                for r in rewards])
            advantage = (returns - returns.mean(axis=0)) / (returns.std(axis=0) + 1e-8)
            loss = -sum(float(advantage[sample, index]) * log_p for sample, index, log_p in log_probs) / samples
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            history.append(float(rewards.mean()))
        return history

    def save(self, path: str | Path) -> None:
        import torch

        torch.save({"features": self.features, "state": self.net.state_dict()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "PolicyNetwork":
        import torch

        data = torch.load(str(path), weights_only=True)
        policy = cls(int(data["features"]))
        policy.net.load_state_dict(data["state"])
        return policy


@register_criterion("policy")
class Policy(Criterion):
    """Keep-propensity from the PruneNet policy for neuron groups (trained on this model's layers unless a
    saved policy is given as option `policy_file`); other groups fall back to L2 magnitude."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise GraphpruneError("criterion 'policy' needs torch: pip install 'graphprune[torch]'") from exc
        self.policy: PolicyNetwork | None = None

    def _policy_for(self, analysis: Analysis, features: int) -> PolicyNetwork:
        if self.policy is None:
            path = self.options.get("policy_file")
            if path and Path(path).exists():
                self.policy = PolicyNetwork.load(path)
            else:
                layers = [rows for g in analysis.prunable() if g.kind == "neuron"
                          for rows in [producer_rows(g)] if rows is not None and rows.shape[1] == features]
                self.policy = PolicyNetwork(features, self.seed)
                self.policy.train(layers, seed=self.seed)
                if path:
                    self.policy.save(path)
        if self.policy.features != features:
            raise GraphpruneError(f"the policy expects rows of {self.policy.features} weights; "
                                  f"this layer has {features}")
        return self.policy

    def score(self, analysis: Analysis, group: Group) -> np.ndarray:
        rows = producer_rows(group) if group.kind == "neuron" else None
        if rows is None:
            from graphprune.passes.importance.magnitude import L2

            return L2().score(analysis, group)
        return self._policy_for(analysis, rows.shape[1]).propensity(rows)
