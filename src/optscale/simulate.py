"""Semi-synthetic completion pools in which OptScale's score model holds exactly.

Real pools cost GPU hours and never reveal the true per-problem score distribution; a
simulated pool does, while its problems look like real ones. Everything below is drawn with
numpy, vectorised over problems and samples, from one seed.

**Problems.** Problem ``p`` draws a difficulty level ``l_p`` and truncated-normal parameters
``(mu_p, sigma_p)`` from a :class:`Population` (by default the packaged ``population.json``,
fitted by ``scripts/fit_population.py`` to the PRM score moments of 4,501 MATH problems).
With probability ``at_bound[l]`` the problem sits at the estimators' box bound
``mu_p = MU_BOUNDS[1]`` (scores piled against 1 with a long left tail: no truncated normal
inside the box matches their moments, so the fit stops there; about two thirds of the real
problems) and ``log sigma_p`` follows a 1-D Gaussian mixture; otherwise ``(mu_p, log sigma_p)``
follows a 2-D Gaussian mixture. Both mixtures have level-dependent weights; draws are clipped
to the estimators' box.

**Scores.** ``s_pi ~ TN(mu_p, sigma_p)`` i.i.d. over samples ``i``: exactly OptScale's model.

**Correctness.** A verifier that is informative but imperfect: correctness depends on how
high a score is *within its problem*. With ``m_p, d_p`` the mean and standard deviation of
``TN(mu_p, sigma_p)``, ``e_p, f_p ~ N(0, 1)`` and ``rho = difficulty_corr``::

    x_p   = (logit(m_p) - easiness_loc) / easiness_scale     # standardised easiness from scores
    eta_p = rho * x_p + sqrt(1 - rho^2) * e_p                # latent easiness, ~ N(0, 1)
    b_p   = intercept + difficulty_spread * eta_p            # logit pass rate at a typical score
    a_p   = discrimination + discrimination_sd * f_p         # how well the verifier ranks here
    z_pi  = (s_pi - m_p) / d_p                               # score standardised within problem
    P(correct_pi | s_pi) = sigmoid(b_p + a_p * z_pi)

independently over samples given their scores. Problems with higher scores are easier
(``rho > 0``) but not deterministically so. ``discrimination`` is the verifier's average skill
(0: useless for picking answers; larger: Best-of-N gains more); ``discrimination_sd`` lets it
vary by problem, down to problems where it prefers wrong answers (``a_p < 0``, reward
hacking), on which Best-of-N gets worse with N. Because ``z_pi`` cannot exceed
``(1 - m_p) / d_p`` (about 1 for problems piled against 1), Best-of-N accuracy levels off
instead of reaching 1. ``intercept``, ``difficulty_spread``, ``discrimination`` and
``discrimination_sd`` are calibrated to the official MATH500 Best-of-N and majority-vote
(Self-Consistency) accuracies; ``population.json`` keeps targets and model curves under
``calibration``.

**Answers.** Correct samples carry the gold answer. Each problem has ``wrong_answers``
distinct wrong answers with probabilities ``q_p ~ Dirichlet(wrong_concentration)``: skewed,
so a popular wrong answer can win a majority vote. A wrong sample has no answer (``None``,
like a truncated response) with probability ``no_answer_rate``, else one drawn from ``q_p``.

**Tokens.** Harder problems and wrong answers are longer, with ``e'_p, e_pi ~ N(0, 1)``::

    tokens_pi = max(1, round(exp(tokens_loc - tokens_difficulty * eta_p
                                 + tokens_problem_sd * e'_p + tokens_sample_sd * e_pi)
                             * (wrong_tokens_factor if wrong else 1)))

``tokens_loc`` is calibrated to the official mean tokens per sample on MATH500; the other
token constants are stated assumptions (the official data hold only means).

Every constant above is in ``population.json`` under ``model`` and can be overridden per call.

**Weak verifier.** ``verifier="weak"`` (``optscale simulate --verifier weak``) keeps the
problems, answers and tokens of the model above and makes the scores less informative of
correctness, by overriding three constants (:data:`VERIFIERS`): ``discrimination`` 0.35
(default 1.26: a sample's within-problem score rank says less about whether it is right),
``discrimination_sd`` 0.35 (default 0.09: on about 16% of the problems the verifier prefers
wrong answers) and ``difficulty_corr`` 0.3 (default 0.6: a problem's score level says less
about how easy it is). On 2,000 x 64 draws the area under the ROC curve of score against
correctness falls from 0.76 to 0.61 (pooled) and from 0.82 to 0.60 (within problems), and
Best-of-64 falls below the majority vote (about 0.91 vs 0.92; by default 0.94 vs 0.93), as on
pools scored by an LLM judge. Constants given explicitly override the variant's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from scipy import special

from .checks import check_int, is_number
from .errors import InputError
from .fit import MU_BOUNDS, SIGMA_BOUNDS
from .io import read_json
from .pools import MAX_SAMPLES, PoolProblem
from .stats import truncnorm

__all__ = [
    "FORMAT",
    "MAX_DRAWS",
    "MAX_WRONG_ANSWERS",
    "MODEL_KEYS",
    "Population",
    "VERIFIERS",
    "SimulatedPool",
    "check_sizes",
    "latent_easiness",
    "simulate_arrays",
    "simulate_pool",
]

#: Identifies the layout of a population file.
FORMAT = "optscale-population/1"

#: The tunable model constants and what each accepts.
MODEL_KEYS: dict[str, str] = {
    "intercept": "real",
    "difficulty_spread": "nonnegative",
    "difficulty_corr": "correlation",
    "discrimination": "nonnegative",
    "discrimination_sd": "nonnegative",
    "easiness_loc": "real",
    "easiness_scale": "positive",
    "wrong_answers": "count",
    "wrong_concentration": "positive",
    "no_answer_rate": "probability",
    "tokens_loc": "real",
    "tokens_difficulty": "real",
    "tokens_problem_sd": "nonnegative",
    "tokens_sample_sd": "nonnegative",
    "wrong_tokens_factor": "positive",
}

#: Verifier variants: model constants each one overrides (see the module doc).
VERIFIERS: dict[str, dict[str, float]] = {
    "default": {},
    "weak": {"discrimination": 0.35, "discrimination_sd": 0.35, "difficulty_corr": 0.3},
}

_KIND_TEXT = {
    "real": "a finite number",
    "nonnegative": "a finite number >= 0",
    "positive": "a finite number > 0",
    "correlation": "a number in [-1, 1]",
    "probability": "a number in [0, 1]",
    "count": "an integer from 1 to {MAX_WRONG_ANSWERS:,}",
}

_ACCEPTS = {
    "real": lambda v: math.isfinite(v),
    "nonnegative": lambda v: math.isfinite(v) and v >= 0,
    "positive": lambda v: math.isfinite(v) and v > 0,
    "correlation": lambda v: -1 <= v <= 1,
    "probability": lambda v: 0 <= v <= 1,
    "count": lambda v: float(v).is_integer() and 1 <= v <= MAX_WRONG_ANSWERS,
}

# Independent random streams, so that changing one part of the model (say the number of
# wrong answers) leaves every other draw of the same seed unchanged.
_STREAMS = ("problems", "latents", "scores", "correct", "answers", "tokens")

#: Most distinct wrong answers per problem (``wrong_answers``): every problem keeps a probability
#: for each, so memory grows with problems x wrong answers (see also :data:`MAX_DRAWS`).
MAX_WRONG_ANSWERS = 10_000


def _check_value(name: str, value: Any) -> float:
    kind = MODEL_KEYS[name]
    ok = is_number(value, finite=False)
    if not ok or not _ACCEPTS[kind](float(value)):
        raise InputError(f"must be {_KIND_TEXT[kind].format(MAX_WRONG_ANSWERS=MAX_WRONG_ANSWERS)}, got {value!r}",
                         name)
    return int(value) if kind == "count" else float(value)


def _array(data: Mapping, key: str, shape: tuple, where: str) -> np.ndarray:
    try:
        out = np.asarray(data[key], dtype=float)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"missing or not numeric: {key}", where) from None
    if out.shape != shape or not np.isfinite(out).all():
        raise InputError(f"{key} must be finite numbers of shape {shape}, got shape {out.shape}", where)
    return out


def _normalised(weights: np.ndarray, key: str, where: str) -> np.ndarray:
    if (weights < 0).any() or not np.allclose(weights.sum(axis=-1), 1.0, atol=1e-6):
        raise InputError(f"{key} must be non-negative and sum to 1 per row", where)
    return weights / weights.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Population:
    """Where simulated problems come from: the fitted law of ``(level, mu, sigma)`` and the model constants.

    Arrays are indexed by level (rows of ``*_weights``, ``at_bound``) and by mixture component.
    """

    levels: np.ndarray  #: level values, e.g. 1..5
    level_prob: np.ndarray  #: how often each level occurs
    at_bound: np.ndarray  #: P(mu at the box bound | level)
    bound_weights: np.ndarray  #: (levels, J) weights of the log-sigma mixture at the bound
    bound_means: np.ndarray  #: (J,)
    bound_sds: np.ndarray  #: (J,)
    interior_weights: np.ndarray  #: (levels, K) weights of the (mu, log sigma) mixture
    interior_means: np.ndarray  #: (K, 2)
    interior_covs: np.ndarray  #: (K, 2, 2)
    model: Mapping[str, float]  #: the constants of :data:`MODEL_KEYS`
    provenance: Mapping[str, Any]  #: where the file came from (source, count, date, command)
    calibration: Mapping[str, Any]  #: targets and model curves the constants were fitted to

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Population:
        """Read a population file; ``None`` reads the one packaged with optscale."""
        if path is None:
            where = "optscale/data/population.json"
            data = json.loads((resources.files("optscale") / "data" / "population.json").read_text(encoding="utf-8"))
        else:
            where = os.fspath(path)
            data = read_json(path)
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "population") -> Population:
        """Validate the parsed JSON layout (see ``scripts/fit_population.py``)."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise InputError(f"not a population file (expected format {FORMAT!r})", where)
        try:
            levels, bound, interior = data["levels"], data["at_bound"], data["interior"]
            model = data["model"]
        except KeyError as exc:
            raise InputError(f"missing section {exc.args[0]!r}", where) from None
        values = _array(levels, "values", (len(levels.get("values", [])),), where)
        n_levels = values.size
        n_bound = len(bound.get("means", []))
        n_interior = len(interior.get("means", []))
        if n_levels == 0 or n_bound == 0 or n_interior == 0:
            raise InputError("levels and both mixtures need at least one entry", where)
        covs = _array(interior, "covariances", (n_interior, 2, 2), where)
        if (np.linalg.eigvalsh(covs) <= 0).any():
            raise InputError("interior covariances must be positive definite", where)
        at_bound = _array(bound, "prob", (n_levels,), where)
        if ((at_bound < 0) | (at_bound > 1)).any():
            raise InputError("at_bound.prob must lie in [0, 1]", where)
        if bound.get("mu") != MU_BOUNDS[1]:
            raise InputError(f"fitted for the bound mu={bound.get('mu')}, but estimators stop at {MU_BOUNDS[1]}", where)
        sds = _array(bound, "sds", (n_bound,), where)
        if (sds <= 0).any():
            raise InputError("at_bound.sds must be positive", where)
        missing = sorted(set(MODEL_KEYS) - set(model))
        if missing:
            raise InputError(f"model lacks {', '.join(missing)}", where)
        return cls(
            levels=values.astype(np.int64),
            level_prob=_normalised(_array(levels, "prob", (n_levels,), where), "levels.prob", where),
            at_bound=at_bound,
            bound_weights=_normalised(_array(bound, "weights", (n_levels, n_bound), where), "at_bound.weights", where),
            bound_means=_array(bound, "means", (n_bound,), where),
            bound_sds=sds,
            interior_weights=_normalised(
                _array(interior, "weights", (n_levels, n_interior), where), "interior.weights", where
            ),
            interior_means=_array(interior, "means", (n_interior, 2), where),
            interior_covs=covs,
            model={key: _check_value(key, model[key]) for key in MODEL_KEYS},
            provenance=dict(data.get("provenance", {})),
            calibration=dict(data.get("calibration", {})),
        )

    def with_model(self, **overrides: float) -> Population:
        """A copy with some model constants replaced; unknown names and bad values raise InputError."""
        for key in overrides:
            if key not in MODEL_KEYS:
                raise InputError(f"unknown model constant; known: {', '.join(MODEL_KEYS)}", key)
        checked = {key: _check_value(key, value) for key, value in overrides.items()}
        return dataclasses.replace(self, model={**self.model, **checked})

    def draw_params(
        self, n: int, rng: np.random.Generator, levels: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(level, mu, sigma)`` of ``n`` problems, optionally only of the given levels.

        Every branch's random numbers are drawn for every problem, so the stream consumed
        does not depend on which branch a problem takes.
        """
        prob = self.level_prob
        if levels is not None:
            wanted = np.asarray(list(levels))
            unknown = np.setdiff1d(wanted, self.levels)
            if wanted.size == 0 or unknown.size:
                raise InputError(f"levels must be among {self.levels.tolist()}, got {wanted.tolist()}", "levels")
            prob = np.where(np.isin(self.levels, wanted), prob, 0.0)
            if prob.sum() <= 0:
                raise InputError(f"levels {wanted.tolist()} never occur in this population", "levels")
            prob = prob / prob.sum()
        u = rng.random((n, 4))
        noise = rng.standard_normal((n, 3))
        row = _categorical(prob[None, :], u[:, 0])
        at_bound = u[:, 1] < self.at_bound[row]
        k_bound = _categorical(self.bound_weights[row], u[:, 2])
        log_sigma_bound = self.bound_means[k_bound] + self.bound_sds[k_bound] * noise[:, 0]
        k_in = _categorical(self.interior_weights[row], u[:, 3])
        chol = np.linalg.cholesky(self.interior_covs)[k_in]
        inner = self.interior_means[k_in] + np.einsum("nij,nj->ni", chol, noise[:, 1:])
        mu = np.where(at_bound, MU_BOUNDS[1], inner[:, 0])
        log_sigma = np.where(at_bound, log_sigma_bound, inner[:, 1])
        mu = np.clip(mu, *MU_BOUNDS)
        sigma = np.clip(np.exp(log_sigma), *SIGMA_BOUNDS)
        return self.levels[row], mu, sigma


def _categorical(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index drawn from each row of ``weights`` by inverting its CDF at ``u``."""
    cdf = np.cumsum(weights, axis=-1)
    index = (u[:, None] * cdf[..., -1:] >= cdf).sum(axis=-1)
    return np.minimum(index, weights.shape[-1] - 1)


def _categorical_rows(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``_categorical`` of row ``p`` of ``weights`` ``(P, K)`` at every ``u[p, i]`` ``(P, S)``, in blocks
    of rows so that memory stays near ``P x K`` (never ``P x S x K``)."""
    out = np.empty(u.shape, dtype=np.int64)
    p, s = u.shape
    step = max(1, 4_000_000 // max(1, s * weights.shape[1]))
    for lo in range(0, p, step):
        w, x = weights[lo:lo + step], u[lo:lo + step]
        out[lo:lo + step] = _categorical(np.repeat(w, s, axis=0), x.ravel()).reshape(x.shape)
    return out


def latent_easiness(mu, sigma, noise, model: Mapping[str, float]) -> np.ndarray:
    """``eta_p``: the standardised easiness seen in the scores, blurred by ``noise`` (see module doc)."""
    mean, _ = truncnorm.mean_std(mu, sigma)
    mean = np.clip(mean, 1e-12, 1 - 1e-12)
    x = (special.logit(mean) - model["easiness_loc"]) / model["easiness_scale"]
    rho = model["difficulty_corr"]
    return rho * x + math.sqrt(1.0 - rho * rho) * np.asarray(noise, dtype=float)


@dataclass(frozen=True)
class SimulatedPool:
    """A simulated pool as arrays (problems x samples), before it becomes pool records.

    ``answer`` codes each sample's answer: 0 the gold answer, ``k >= 1`` the problem's k-th
    wrong answer (``wrong[:, k - 1]``), -1 none. Answers are integers, written as strings.
    """

    level: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    easiness: np.ndarray  #: eta_p
    skill: np.ndarray  #: a_p, the verifier's discrimination on each problem
    scores: np.ndarray
    correct: np.ndarray
    answer: np.ndarray
    tokens: np.ndarray
    gold: np.ndarray
    wrong: np.ndarray


#: Most samples one simulation draws (problems x samples): each costs a few dozen bytes in arrays
#: and about a kilobyte as a pool object.
MAX_DRAWS = 10**7


def _check_size(value: Any, name: str, low: int) -> int:
    return check_int(value, name, low)


def check_sizes(n_problems: Any, n_samples: Any) -> tuple[int, int]:
    """Problem and sample counts, each >= 1 and at most :data:`MAX_DRAWS` together; errors name them."""
    n_problems, n_samples = _check_size(n_problems, "n_problems", 1), _check_size(n_samples, "n_samples", 1)
    if n_samples > MAX_SAMPLES:
        raise InputError(f"at most {MAX_SAMPLES:,} samples per problem (what a pool may hold), got {n_samples:,}",
                         "n_samples")
    if n_problems * n_samples > MAX_DRAWS:
        raise InputError(f"{n_problems} problems x {n_samples} samples exceed {MAX_DRAWS:,} draws", "n_samples"
                         if n_samples > n_problems else "n_problems")
    return n_problems, n_samples


def simulate_arrays(
    n_problems: int,
    n_samples: int,
    seed: int,
    population: Population | None = None,
    levels: Sequence[int] | None = None,
    verifier: str = "default",
    **overrides: float,
) -> SimulatedPool:
    """Draw a pool as arrays; deterministic given ``seed`` (see the module doc for the model).

    ``verifier`` picks a variant of :data:`VERIFIERS` (``default`` or ``weak``); ``overrides``
    replace model constants on top of it.
    """
    n_problems, n_samples = check_sizes(n_problems, n_samples)
    seed = _check_size(seed, "seed", 0)
    if verifier not in VERIFIERS:
        raise InputError(f"unknown verifier variant {verifier!r}; use one of {', '.join(VERIFIERS)}", "verifier")
    pop = (population if population is not None else Population.load()).with_model(**{**VERIFIERS[verifier],
                                                                                        **overrides})
    model = pop.model
    rng = dict(zip(_STREAMS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_STREAMS)))))
    shape = (n_problems, n_samples)

    level, mu, sigma = pop.draw_params(n_problems, rng["problems"], levels)
    latent = rng["latents"].standard_normal((n_problems, 3))
    eta = latent_easiness(mu, sigma, latent[:, 0], model)
    skill = model["discrimination"] + model["discrimination_sd"] * latent[:, 2]

    scores = truncnorm.sample(mu[:, None], sigma[:, None], size=shape, rng=rng["scores"])
    mean, sd = truncnorm.mean_std(mu, sigma)
    z = (scores - mean[:, None]) / sd[:, None]
    logit = model["intercept"] + model["difficulty_spread"] * eta[:, None] + skill[:, None] * z
    correct = rng["correct"].random(shape) < special.expit(logit)

    k = int(model["wrong_answers"])
    if n_problems * k > MAX_DRAWS:
        raise InputError(f"{n_problems} problems x {k} wrong answers exceed {MAX_DRAWS:,} (each problem keeps a "
                         "probability per wrong answer); simulate fewer problems or wrong answers", "wrong_answers")
    draw = rng["answers"]
    gold = draw.integers(10, 1000, n_problems)
    wrong = gold[:, None] + np.cumsum(draw.integers(1, 50, (n_problems, k)), axis=1)
    share = draw.dirichlet(np.full(k, model["wrong_concentration"]), n_problems)
    pick = 1 + _categorical_rows(share, draw.random(shape))
    blank = draw.random(shape) < model["no_answer_rate"]
    answer = np.where(correct, 0, np.where(blank, -1, pick))

    log_len = (
        model["tokens_loc"]
        - model["tokens_difficulty"] * eta[:, None]
        + model["tokens_problem_sd"] * latent[:, 1:2]
        + model["tokens_sample_sd"] * rng["tokens"].standard_normal(shape)
    )
    length = np.exp(log_len) * np.where(correct, 1.0, model["wrong_tokens_factor"])
    tokens = np.maximum(1, np.rint(length)).astype(np.int64)
    return SimulatedPool(level, mu, sigma, eta, skill, scores, correct, answer, tokens, gold, wrong)


def simulate_pool(
    n_problems: int,
    n_samples: int,
    seed: int,
    population: Population | None = None,
    levels: Sequence[int] | None = None,
    verifier: str = "default",
    **overrides: float,
) -> list[PoolProblem]:
    """A semi-synthetic pool of ``n_problems`` problems with ``n_samples`` samples each.

    ``overrides`` replace model constants (:data:`MODEL_KEYS`, e.g. ``discrimination=2``);
    ``levels`` keeps only problems of those difficulty levels; ``verifier="weak"`` makes the
    scores less informative of correctness (:data:`VERIFIERS`). Ids are ``sim<seed>/0000``... (the
    seed in the id and the question: pools of two seeds are different problems); each
    problem also carries its true ``mu``, ``sigma`` and ``level``, which tests and plots can
    compare with estimates.
    """
    sim = simulate_arrays(n_problems, n_samples, seed, population, levels, verifier, **overrides)
    width = max(4, len(str(n_problems - 1)))
    problems = []
    for p in range(n_problems):
        gold, wrong = sim.gold[p], sim.wrong[p]
        samples = [
            {"answer": None if a < 0 else str(gold if a == 0 else wrong[a - 1]), "score": s, "tokens": t,
             "correct": c}
            for a, s, t, c in zip(
                sim.answer[p].tolist(), sim.scores[p].tolist(), sim.tokens[p].tolist(), sim.correct[p].tolist()
            )
        ]
        problems.append(
            PoolProblem.model_validate(
                {
                    "id": f"sim{seed}/{p:0{width}d}",
                    "question": f"Simulated problem {p} of seed {seed} (level {sim.level[p]}); its scores follow "
                                "TN(mu, sigma).",
                    "answer": str(gold),
                    "samples": samples,
                    "mu": float(sim.mu[p]),
                    "sigma": float(sim.sigma[p]),
                    "level": int(sim.level[p]),
                }
            )
        )
    return problems
