"""What a replay measured: accuracy with uncertainty, cost, and the honest fixed-N baseline.

An adaptive rule only pays if it beats the *whole* fixed-N Best-of-N curve at the same cost,
not just BoN at the largest budget, so every policy is compared with the BoN curve
interpolated at its own mean token count and with the best fixed N that costs no more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..policies.base import ReplayBatch, ReplayDecisions

__all__ = ["BonCurve", "PolicyStats", "bon_curve", "evaluate"]


@dataclass(frozen=True)
class BonCurve:
    """Fixed-N Best-of-N accuracy and cost for N = 1..n_max on one batch."""

    n: np.ndarray
    accuracy: np.ndarray
    mean_tokens: np.ndarray
    mean_samples: np.ndarray

    def accuracy_at_tokens(self, tokens: float) -> float:
        """Linear interpolation on the curve (what mixing two neighbouring fixed N achieves)."""
        if tokens < self.mean_tokens[0]:
            return float("nan")
        return float(np.interp(tokens, self.mean_tokens, self.accuracy))

    def best_within_tokens(self, tokens: float) -> tuple[int, float]:
        """The most accurate fixed N whose mean cost is at most ``tokens`` (0, nan if none)."""
        ok = self.mean_tokens <= tokens * (1 + 1e-12)
        if not ok.any():
            return 0, float("nan")
        i = int(np.argmax(np.where(ok, self.accuracy, -np.inf)))
        return int(self.n[i]), float(self.accuracy[i])

    def rows(self) -> list[dict]:
        return [
            {"n": int(n), "accuracy": float(a), "mean_tokens": float(t), "mean_samples": float(s)}
            for n, a, t, s in zip(self.n, self.accuracy, self.mean_tokens, self.mean_samples)
        ]


def bon_curve(batch: ReplayBatch, n_max: int | None = None) -> BonCurve:
    """Best-of-N for every N at once: a running argmax over each order (earliest wins ties)."""
    score, correct, tokens = batch.flat("score"), batch.flat("correct"), batch.flat("tokens")
    available = batch.flat_available()
    n_max = int(n_max or score.shape[1])
    rows = np.arange(score.shape[0])
    best = np.zeros(score.shape[0], dtype=np.int64)
    spent = np.zeros(score.shape[0])
    acc, tok, smp = [], [], []
    for n in range(1, n_max + 1):
        j = n - 1
        inside = j < available
        if j < score.shape[1]:
            better = inside & (score[:, j] > score[rows, best])
            best = np.where(better, j, best)
            spent = spent + np.where(inside, tokens[:, min(j, score.shape[1] - 1)], 0.0)
        acc.append(_accuracy(correct[rows, best].reshape(batch.shape[:2])))
        tok.append(spent.mean())
        smp.append(np.minimum(n, available).mean())
    return BonCurve(np.arange(1, n_max + 1), np.array(acc), np.array(tok), np.array(smp))


def _accuracy(per_row: np.ndarray) -> float:
    return float(per_row.mean())


@dataclass
class PolicyStats:
    """One policy's row of a report."""

    policy: str
    label: str
    n_max: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_samples: float
    mean_tokens: float
    bon_accuracy: float  # fixed BoN at the same n_max
    bon_tokens: float
    token_savings: float  # 1 - tokens / BoN@n_max tokens
    sample_savings: float
    bon_accuracy_same_tokens: float  # BoN curve interpolated at this policy's mean tokens
    gain_vs_bon_curve: float
    best_fixed_n: int  # most accurate fixed N costing no more than this policy
    best_fixed_accuracy: float
    problems: int
    orders: int
    settings: dict = field(default_factory=dict)
    promised_alpha: float | None = None
    achieved: float | None = None  # share of (problem, order) whose best used score >= s_min
    achieved_uncapped: float | None = None  # the same where N* fit the budget (the promise applies)
    capped_share: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(
    batch: ReplayBatch,
    decisions: ReplayDecisions,
    policy,
    curve: BonCurve,
    bootstrap: int = 2000,
    seed: int = 0,
) -> PolicyStats:
    """Score a policy's decisions on ``batch`` against the BoN curve of the same batch."""
    p, r, n = batch.shape
    n_used = decisions.n_used
    chosen = decisions.chosen
    picked = np.take_along_axis(batch.correct, np.maximum(chosen, 0)[..., None], axis=2)[..., 0]
    correct = picked & (chosen >= 0)
    per_problem = correct.mean(axis=1)
    used_mask = np.arange(n)[None, None, :] < n_used[..., None]
    tokens = np.where(used_mask, batch.tokens, 0.0).sum(axis=2)
    accuracy = float(per_problem.mean())
    rng = np.random.default_rng(seed)
    boots = per_problem[rng.integers(0, p, size=(bootstrap, p))].mean(axis=1)
    ci_low, ci_high = (float(x) for x in np.quantile(boots, [0.025, 0.975]))
    mean_tokens = float(tokens.mean())
    k = min(policy.n_max, len(curve.n)) - 1
    bon_acc, bon_tok, bon_smp = float(curve.accuracy[k]), float(curve.mean_tokens[k]), float(curve.mean_samples[k])
    same = curve.accuracy_at_tokens(mean_tokens)
    best_n, best_acc = curve.best_within_tokens(mean_tokens)
    stats = PolicyStats(
        policy=policy.name, label=policy.describe(), n_max=policy.n_max, accuracy=accuracy,
        ci_low=ci_low, ci_high=ci_high, mean_samples=float(n_used.mean()), mean_tokens=mean_tokens,
        bon_accuracy=bon_acc, bon_tokens=bon_tok,
        token_savings=1.0 - mean_tokens / bon_tok if bon_tok > 0 else 0.0,
        sample_savings=1.0 - float(n_used.mean()) / bon_smp,
        bon_accuracy_same_tokens=same, gain_vs_bon_curve=accuracy - same,
        best_fixed_n=best_n, best_fixed_accuracy=best_acc, problems=p, orders=r,
        settings=_settings(policy),
    )
    if "capped" in decisions.estimates and hasattr(policy, "s_min"):
        best_used = np.where(used_mask, batch.score, -np.inf).max(axis=2)
        hit = best_used >= policy.s_min
        capped = decisions.estimates["capped"].astype(bool)
        stats.promised_alpha = float(policy.alpha)
        stats.achieved = float(hit.mean())
        stats.achieved_uncapped = float(hit[~capped].mean()) if (~capped).any() else None
        stats.capped_share = float(capped.mean())
    return stats


def _settings(policy) -> dict:
    out = {}
    for key, value in policy.model_dump(exclude={"n_max", "priors"}).items():
        out[key] = getattr(value, "value", value)
    if getattr(policy, "priors", None) is not None:
        out["priors"] = str(policy.priors)
    return out
