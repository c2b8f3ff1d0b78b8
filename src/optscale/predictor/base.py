"""The interface every predictor kind shares, and what it does on their behalf.

A kind only maps problems to point predictions of their score moments ``(mean, std)``.
Everything else is common and lives here:

- the range: points are clipped to ``0 < mean < 1`` and ``0 < std <= 0.5``;
- the predictive distribution: a normal in ``z = (logit(mean), log(std))`` centred on the
  point, with ``scale`` the RMS of held-out residuals in z-space. In z-space the residuals are
  roughly homoscedastic, so mapped back the intervals stay in range and narrow where the
  scores crowd against 1. The points themselves are fitted in the moments' own scale: fitting
  in z-space and mapping back loses about 5 points of RMSE reduction on the mean and 4 on the
  std on MATH (``benchmarks/predictor_cv.py``), because squared error in z-space under-weights
  exactly the hard problems whose scores vary most;
- validation by grouped K-fold cross-validation (a repeated question never straddles folds),
  scored by :func:`metrics` (errors of both moments, coverage of the predictive intervals);
- the prior widths for OptScale^t: the RMS error, on held-out folds, of the truncated-normal
  *parameters* that the predicted moments convert to, against those of the true moments;
- the versioned model folder (``config.json`` + the kind's weights + ``metrics.json``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from scipy.special import expit, logit
from scipy.stats import norm

from .._version import __version__
from ..checks import MAX_SEED, check_seed  # noqa: F401 - both kept importable from here
from ..errors import InputError
from ..fit import moments_to_params
from ..io import read_json, staged_dir, write_text
from ..registry import Registry
from .data import Problems, TrainingSet
from .validation import Params, State, validate

__all__ = ["FORMAT", "FORMAT_VERSION", "COVERAGES", "Prediction", "Predictor", "group_folds", "cross_validate",
           "calibrated", "clip_moments", "metrics", "load", "KINDS"]

FORMAT = "optscale-predictor"
#: Bumped whenever a saved folder could be misread by this code.
FORMAT_VERSION = 1
#: Floors of the transform: labels at exactly 0 or 1 (or std 0) would map to infinity.
MEAN_EPS = 1e-3
STD_EPS = 1e-3
#: Largest predictive scale in z-space: no residual of clipped moments is larger (the logit
#: span), and it keeps ``exp(scale**2)`` in :meth:`Prediction.around` finite.
MAX_Z_SCALE = float(2 * logit(1 - MEAN_EPS))
#: Gauss-Hermite nodes for the moments of expit(Normal): accurate to ~1e-6 for scales below 2.
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(32)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()

#: Nominal coverages of the central predictive intervals that validation reports check.
COVERAGES = (0.5, 0.8, 0.9)

#: Every predictor kind, registered by defining its class (``kind = "..."``).
KINDS: Registry[type["Predictor"]] = Registry("predictor kind")
INSTALL_HINT = "install the predictor extra: pip install 'optscale[predictor]' (install a CPU build of torch first)"


def require_extra() -> None:
    """Fail with one clear line, not an ImportError deep inside a fit, when scikit-learn is missing."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise InputError(f"scikit-learn is not installed; {INSTALL_HINT}", "predictor") from None


def clip_moments(points) -> np.ndarray:
    """Points ``(n, 2)`` of ``(mean, std)`` clipped into the range the transform accepts."""
    points = np.asarray(points, float).reshape(-1, 2)
    return np.stack([np.clip(points[:, 0], MEAN_EPS, 1.0 - MEAN_EPS), np.clip(points[:, 1], STD_EPS, 0.5)], -1)


def to_z(mean, std) -> np.ndarray:
    """Score moments -> ``(logit mean, log std)``, shape ``(n, 2)``."""
    points = clip_moments(np.stack([np.asarray(mean, float), np.asarray(std, float)], -1))
    return np.stack([logit(points[:, 0]), np.log(points[:, 1])], -1)


@dataclass(frozen=True)
class Prediction:
    """Predicted score moments per problem, with the predictive uncertainty of each.

    ``mean``/``std`` are the point predictions (the medians of the predictive distribution);
    ``mean_sd``/``std_sd`` the predictive standard deviations. ``loc``/``scale`` are the
    underlying normal in z-space, from which :meth:`interval` is exact.
    """

    mean: np.ndarray
    std: np.ndarray
    mean_sd: np.ndarray
    std_sd: np.ndarray
    loc: np.ndarray
    scale: np.ndarray

    @classmethod
    def around(cls, points, scale) -> "Prediction":
        """The predictive distribution centred (in z-space) on points ``(n, 2)`` of ``(mean, std)``."""
        points = clip_moments(points)
        loc = to_z(points[:, 0], points[:, 1])
        scale = np.broadcast_to(np.asarray(scale, float), loc.shape).copy()
        values = expit(loc[:, :1] + scale[:, :1] * _NODES)
        first = values @ _WEIGHTS
        mean_sd = np.sqrt(np.maximum((values**2) @ _WEIGHTS - first**2, 0.0))
        s2 = scale[:, 1] ** 2
        std_sd = points[:, 1] * np.sqrt(np.exp(s2) * np.expm1(s2))  # log-normal with that median
        return cls(points[:, 0], points[:, 1], mean_sd, std_sd, loc, scale)

    def __len__(self) -> int:
        return int(self.mean.size)

    def interval(self, coverage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Central predictive intervals ``(mean_lo, mean_hi, std_lo, std_hi)`` of the given coverage."""
        q = norm.ppf(0.5 + coverage / 2)
        lo, hi = self.loc - q * self.scale, self.loc + q * self.scale
        return expit(lo[:, 0]), expit(hi[:, 0]), np.exp(lo[:, 1]), np.exp(hi[:, 1])





def group_folds(problems: Problems, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled K-fold splits that keep every copy of a question in one fold."""
    from sklearn.model_selection import GroupKFold

    seed = check_seed(seed)
    if folds < 2:
        raise InputError(f"need at least 2 folds, got {folds}", "folds")
    groups = np.unique(np.asarray(problems.questions, dtype=object), return_inverse=True)[1]
    if np.unique(groups).size < folds:
        raise InputError(f"{np.unique(groups).size} distinct questions cannot fill {folds} folds", "folds")
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(problems)), groups=groups))


class Calibration(State):
    """The predictive scale and prior widths that :meth:`Predictor.fit` measured on held-out folds."""

    z_scale: tuple[Annotated[StrictFloat, Field(ge=0, le=MAX_Z_SCALE)], Annotated[StrictFloat, Field(ge=0, le=MAX_Z_SCALE)]]
    width_mu: Annotated[StrictFloat, Field(ge=0)]
    width_sigma: Annotated[StrictFloat, Field(ge=0)]


class SavedConfig(BaseModel):
    """A model folder's ``config.json``; ``params`` and ``state`` are checked by the kind's own models."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: StrictStr
    format_version: StrictInt
    kind: StrictStr
    optscale_version: StrictStr
    params: dict[str, Any]
    state: dict[str, Any]
    calibration: Calibration


class Predictor(ABC):
    """Reads problem texts, predicts the distribution of their verifier-score moments.

    Subclasses set ``kind``, ``params_model`` (their hyper-parameters: a :class:`Params` whose
    field defaults become ``defaults``) and ``state_model`` (what ``_save_weights`` returns),
    and implement the four ``_`` hooks; targets and points are ``(n, 2)`` arrays of ``(mean, std)``.
    """

    kind: ClassVar[str]
    params_model: ClassVar[type[Params]] = Params
    state_model: ClassVar[type[State]] = State
    #: The hyper-parameters' defaults, as JSON values (derived from ``params_model``).
    defaults: ClassVar[dict] = {}
    #: Folds that :meth:`fit` validates on by default (each refits the kind once).
    validation_rounds: ClassVar[int | None] = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.defaults = cls.params_model().model_dump(mode="json")
        if "kind" in cls.__dict__:
            KINDS.add(cls.kind, cls)

    def __init__(self, **params):
        """Validate ``params`` against ``params_model``: an error names the parameter and says what
        it allows, before any work (and any allocation) is done with it."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = f"its parameters are {', '.join(self.defaults)}" if self.defaults else "it has none"
            raise InputError(f"unknown parameter(s) for kind {self.kind!r}: {', '.join(unknown)}; {known}", "params")
        #: Validated, as JSON values (what ``config.json`` stores).
        self.params = validate(self.params_model, params).model_dump(mode="json")
        #: Residual RMS in z-space (the predictive scale), set by :meth:`fit`.
        self.scale: np.ndarray | None = None
        #: Prior widths ``(width_mu, width_sigma)`` from held-out error in parameter space.
        self.widths: tuple[float, float] | None = None
        #: Validation metrics and training provenance, written to ``metrics.json``.
        self.metrics: dict = {}
        #: Where errors of this model point: its folder once loaded.
        self.source = "predictor"

    # ---------------------------------------------------------------- kind hooks
    @abstractmethod
    def _fit(self, problems: Problems, targets: np.ndarray) -> None: ...

    @abstractmethod
    def _predict(self, problems: Problems) -> np.ndarray: ...

    @abstractmethod
    def _save_weights(self, folder: Path) -> dict:
        """Write weights into ``folder``; return the JSON state that :meth:`_load_weights` needs."""

    @abstractmethod
    def _load_weights(self, folder: Path, state: dict) -> None: ...

    # ---------------------------------------------------------------- public API
    @property
    def fitted(self) -> bool:
        return self.scale is not None

    def fit(self, data: TrainingSet, folds: int = 5, seed: int = 0, rounds: int | None = None) -> "Predictor":
        """Validate on held-out folds (``rounds`` of ``folds``; all by default), then fit on all rows.

        The held-out residuals set the predictive scale and the prior widths, so both measure
        error on problems the model has not seen.
        """
        require_extra()
        rounds = rounds if rounds is not None else self.validation_rounds
        held_out, points = cross_validate(self, data, folds, seed, rounds)
        oof = calibrated(points[held_out], data.mean[held_out], data.std[held_out])
        self.scale = oof.scale[0]
        self.widths = param_widths(oof, data.mean[held_out], data.std[held_out])
        self.metrics = {
            "validation": {"folds": folds, "rounds": rounds or folds, "seed": seed, "rows": int(held_out.sum()),
                           **metrics(oof, data.mean[held_out], data.std[held_out])},
            "training_rows": len(data),
        }
        self._fit(data.problems, np.stack([data.mean, data.std], -1))
        return self

    def predict(self, problems: Problems) -> Prediction:
        if not self.fitted:
            raise InputError(f"{self.kind} predictor is not fitted", "predictor")
        points = self._predict(problems)
        if not np.isfinite(points).all():  # finite weights can still overflow: never write NaN priors
            raise InputError(f"the {self.kind} predictor predicted a non-finite score moment; its weights are damaged",
                             self.source)
        return Prediction.around(points, self.scale)

    def save(self, folder: str | Path, replace: bool = False) -> Path:
        """Write ``config.json`` (format version, kind, parameters, calibration), weights, metrics.

        The files are staged and published together, so a failed save never leaves a folder
        whose config describes other weights. Files optscale did not write there are refused
        unless ``replace`` (``predictor train --force``).
        """
        if not self.fitted:
            raise InputError(f"{self.kind} predictor is not fitted", "predictor")
        with staged_dir(folder, str(folder), replace) as staging:
            state = self._save_weights(staging)
            config = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "optscale_version": __version__,
                "params": self.params, "state": state,
                "calibration": {"z_scale": [float(x) for x in self.scale], "width_mu": self.widths[0],
                                "width_sigma": self.widths[1]},
            }
            # json.dumps, not io.write_json: an undefined R^2 (constant labels) is stored as NaN.
            write_text(staging / "config.json", json.dumps(config, indent=1) + "\n")
            write_text(staging / "metrics.json", json.dumps(self.metrics, indent=1) + "\n")
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "Predictor":
        """Load a saved folder of this kind (``Predictor.load`` accepts any kind).

        Everything read is validated first (the config against :class:`SavedConfig`, the
        parameters and state against the kind's models, the weights by the kind's
        ``_load_weights``), so a hand-edited or damaged folder gets one error naming the file and
        field, never a traceback at prediction time or NaN in a priors file.
        """
        require_extra()
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise InputError("not a predictor folder (no config.json)", str(folder))
        config = read_json(config_path)
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise InputError(f"not an {FORMAT} config", str(config_path))
        if config.get("format_version") != FORMAT_VERSION:
            raise InputError(f"format version {config.get('format_version')!r}, this optscale reads {FORMAT_VERSION}; "
                             "retrain with `optscale predictor train`", str(config_path))
        kind = config.get("kind")
        target = KINDS.get(kind, str(config_path))  # an unknown kind names the known ones
        if cls is not Predictor and target is not cls:
            raise InputError(f"kind {kind!r}, expected one of {[cls.kind]}", str(config_path))
        saved = validate(SavedConfig, config, str(config_path))
        try:
            model = target(**saved.params)
        except InputError as exc:  # named as a parameter (``gammas``): here it is a field of the file
            field = "params" if exc.where in (None, "params") else f"params.{exc.where}"
            raise InputError(exc.detail, f"{config_path} field {field}") from None
        state = validate(target.state_model, saved.state, str(config_path), "state").model_dump()
        model.scale = np.asarray(saved.calibration.z_scale, float)
        model.widths = (saved.calibration.width_mu, saved.calibration.width_sigma)
        model.source = str(folder)
        try:
            model._load_weights(folder, state)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            if isinstance(exc, InputError) and exc.where in model.defaults:  # a parameter the weights refuse
                raise InputError(exc.detail, f"{config_path} field params.{exc.where}") from None
            if isinstance(exc, InputError):
                raise
            raise InputError(f"incomplete or damaged predictor folder ({type(exc).__name__}: {exc})", str(folder)) from None
        metrics_path = folder / "metrics.json"
        model.metrics = read_json(metrics_path) if metrics_path.is_file() else {}
        if not isinstance(model.metrics, dict):
            raise InputError(f"expected a JSON object, got {type(model.metrics).__name__}", str(metrics_path))
        return model


def cross_validate(template: Predictor, data: TrainingSet, folds: int = 5, seed: int = 0, rounds: int | None = None):
    """Held-out point predictions of fresh copies of ``template``: ``(held_out_mask, points)``."""
    targets = np.stack([data.mean, data.std], -1)
    points = np.full((len(data), 2), np.nan)
    for train, test in group_folds(data.problems, folds, seed)[:rounds]:
        model = type(template)(**template.params)
        model._fit(data.problems.subset(train), targets[train])
        points[test] = clip_moments(model._predict(data.problems.subset(test)))
    return ~np.isnan(points[:, 0]), points


def calibrated(points, mean, std) -> Prediction:
    """Held-out points with the predictive scale their own residuals imply (RMS in z-space)."""
    scale = np.sqrt(np.mean((to_z(mean, std) - to_z(*np.asarray(points).T)) ** 2, axis=0))
    return Prediction.around(points, scale)


def _errors(pred: np.ndarray, true: np.ndarray) -> dict:
    resid = pred - true
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return {"mae": float(np.mean(np.abs(resid))), "rmse": float(np.sqrt(np.mean(resid**2))),
            "r2": 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")}


def metrics(pred: Prediction | tuple[np.ndarray, np.ndarray], mean, std) -> dict:
    """MAE, RMSE and R^2 of mean and std; with a :class:`Prediction`, also interval coverage."""
    p_mean, p_std = (pred.mean, pred.std) if isinstance(pred, Prediction) else pred
    out = {"mean": _errors(np.asarray(p_mean), np.asarray(mean)), "std": _errors(np.asarray(p_std), np.asarray(std))}
    if isinstance(pred, Prediction):
        cover = {"mean": {}, "std": {}}
        for c in COVERAGES:
            m_lo, m_hi, s_lo, s_hi = pred.interval(c)
            cover["mean"][str(c)] = float(np.mean((mean >= m_lo) & (mean <= m_hi)))
            cover["std"][str(c)] = float(np.mean((std >= s_lo) & (std <= s_hi)))
        out["coverage"] = cover
        out["predictive_sd"] = {"mean": float(np.mean(pred.mean_sd)), "std": float(np.mean(pred.std_sd))}
    return out


def param_widths(pred: Prediction, mean, std) -> tuple[float, float]:
    """RMS error of the truncated-normal ``(mu, sigma)`` implied by predicted vs true moments."""
    p, t = moments_to_params(pred.mean, pred.std), moments_to_params(mean, std)
    return float(np.sqrt(np.mean((p.mu - t.mu) ** 2))), float(np.sqrt(np.mean((p.sigma - t.sigma) ** 2)))


def load(folder: str | Path) -> Predictor:
    """Load a saved predictor folder of any kind (the kinds register on import of the package)."""
    return Predictor.load(folder)
