"""The default CPU predictor: kernel ridge regression over similar training problems.

MATH problems come in families (the same template, topic and wording at several levels), and
their verifier scores follow the family more than any global trend: on the MATH score moments
a linear ridge on the same features leaves about 4 points of RMSE reduction on the mean and 3
on the std behind (``benchmarks/predictor_cv.py``). So the prediction here is a kernel-weighted
blend of the training problems nearest to the question, with one squared distance summed over
three blocks, each weighted by ``block_weights``:

- ``embedding``: the static all-MiniLM-L6-v2 embedding (:func:`.encoder.static_embed`),
  reduced by PCA to ``embedding_dims`` and renormalised, as ``2 - 2 cos``;
- ``tfidf``: word 1-2-gram TF-IDF of the question, as ``2 - 2 cos``;
- ``meta``: squared distance of the one-hot MATH level and subject (averaged where missing).

The kernel is ``exp(-gamma * distance)``. ``gamma`` and the ridge penalty ``alpha`` are chosen
per target by exact leave-one-out error on the training rows (one eigendecomposition of the
kernel matrix per ``gamma`` serves every ``alpha``), so validation folds never see them chosen
on their own rows. The block weights were fixed once on the seed-0 folds of the MATH data.

A saved model keeps the training rows' reduced embeddings and TF-IDF vectors (float16) and
their dual weights: 1.3 MB for the 4,501 MATH problems. Fitting costs one
eigendecomposition of an ``n x n`` matrix per ``gamma`` (about a minute for 4,501 rows on 2
cores); prediction is one ``m x n`` distance matrix. The packaged default model is this kind
with these defaults, trained by::

    optscale predictor train --kind kernel \
        --data ../shared/data/score-moments/math_train.jsonl \
        --out src/optscale/data/predictor/default --force
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StrictFloat, StrictInt

from ..errors import InputError
from .base import Predictor
from .baselines import MetadataEncoder, load_tfidf, save_tfidf, tfidf_vectorizer
from .data import Problems
from .encoder import DIMENSION, MODEL_NAME, static_embed
from .validation import (BLOCK_WEIGHTS, LOG_GRID, NGRAM_RANGE, BlockWeights, EncoderState, LogGrid, NgramRange,
                         Params, Positive, State, Weights)

__all__ = ["KernelPredictor"]

#: Most kernel widths tried: each costs an eigendecomposition of an n x n matrix.
MAX_GAMMAS = 20
#: Largest kernel width: exp(-1000 * distance) already vanishes between all but near-identical
#: questions, so larger widths fit nothing new and only risk a degenerate leave-one-out error.
MAX_GAMMA = 1000.0
Gamma = Annotated[StrictFloat, Field(gt=0, le=MAX_GAMMA)]
#: Questions predicted at once: 2,048 x 4,501 float64 distances are 74 MB.
CHUNK = 2048


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _cosine_distance(a, b) -> np.ndarray:
    """``2 - 2 cos`` between rows of unit vectors (dense or sparse), clipped at 0."""
    dots = a @ b.T
    return np.maximum(2.0 - 2.0 * (dots.toarray() if hasattr(dots, "toarray") else dots), 0.0)


def loo_select(kernels, y: np.ndarray, alphas: np.ndarray):
    """Per target, the ``(kernel index, alpha, dual weights)`` of least exact leave-one-out error.

    For ``K = V diag(w) V'`` the hat matrix is ``V diag(w / (w + alpha)) V'``, so every penalty
    costs two matrix products after one eigendecomposition; a left-out residual is the fitted
    residual over ``1 - h_ii``.
    """
    best = [(np.inf, -1, 0.0, None)] * y.shape[1]
    for index, kernel in enumerate(kernels):
        w, v = np.linalg.eigh(kernel)
        w = np.maximum(w, 0.0)  # round-off can leave tiny negative eigenvalues
        vy, v2 = v.T @ y, v**2
        for alpha in alphas:
            shrink = w / (w + alpha)
            loo = ((y - v @ (vy * shrink[:, None])) / (1.0 - v2 @ shrink)[:, None]) ** 2
            for j, err in enumerate(loo.mean(axis=0)):
                if err < best[j][0]:
                    best[j] = (err, index, float(alpha), v @ (vy[:, j] / (w + alpha)))
    return [(index, alpha, dual) for _, index, alpha, dual in best]


class KernelParams(Params):
    embedding_model: Literal["all-MiniLM-L6-v2"] = Field(MODEL_NAME, description=f"{MODEL_NAME!r} (the only one supported)")
    embedding_dims: StrictInt = Field(64, ge=1, le=DIMENSION,
                                      description=f"PCA dimensions of the embedding, an integer from 1 to {DIMENSION}")
    block_weights: BlockWeights = Field({"embedding": 0.49, "tfidf": 0.49, "meta": 0.09}, description=BLOCK_WEIGHTS)
    ngram_range: NgramRange = Field((1, 2), description=NGRAM_RANGE)
    min_df: StrictInt = Field(2, ge=1, description="fewest questions a word must occur in, an integer >= 1")
    gammas: list[Gamma] = Field([0.7, 1.0, 1.4], min_length=1, max_length=MAX_GAMMAS,
                                description=f"kernel widths to choose from, a list of 1 to {MAX_GAMMAS} numbers "
                                            f"above 0 and at most {MAX_GAMMA:g}")
    alphas: LogGrid = Field((-2, 0.5, 11), description=LOG_GRID + " (the ridge penalty grid)")


class KernelState(State):
    gamma: tuple[Gamma, Gamma]
    alpha: tuple[Positive, Positive]
    meta: EncoderState | None


class KernelPredictor(Predictor):
    """RBF kernel ridge on static MiniLM embeddings, TF-IDF and level/subject of each question."""

    kind = "kernel"
    params_model = KernelParams
    state_model = KernelState

    def _weight(self, block: str) -> float:
        return float(self.params["block_weights"].get(block, 0.0))

    # ------------------------------------------------------------------ features
    def _embedding(self, problems: Problems) -> np.ndarray:
        return _unit((static_embed(problems.questions) - self.pca_mean) @ self.pca_components.T)

    def _features(self, problems: Problems) -> dict:
        out = {}
        if self.pca_components is not None:
            out["embedding"] = self._embedding(problems)
        if self.tfidf is not None:
            out["tfidf"] = self.tfidf.transform(problems.questions)
        if self.meta is not None:
            out["meta"] = self.meta.transform(problems)
        return out

    def _distance(self, features: dict) -> np.ndarray:
        """Weighted squared distance of every row of ``features`` to every training row."""
        total = 0.0
        for block, x in features.items():
            train = self.train[block]
            if block == "meta":
                d = np.maximum((x**2).sum(1)[:, None] + (train**2).sum(1)[None, :] - 2 * x @ train.T, 0.0)
            else:
                d = _cosine_distance(x, train)
            total = total + self._weight(block) * d
        return total

    # ------------------------------------------------------------------ hooks
    def _fit(self, problems, targets):
        from sklearn.decomposition import PCA

        self.pca_components = self.pca_mean = self.tfidf = self.meta = None
        if self._weight("embedding"):
            raw = static_embed(problems.questions).astype(float)
            dims = max(1, min(self.params["embedding_dims"], raw.shape[1], len(problems) - 1))
            pca = PCA(dims, random_state=0).fit(raw)
            self.pca_components, self.pca_mean = pca.components_, pca.mean_
        if self._weight("tfidf"):
            try:
                self.tfidf = tfidf_vectorizer(self.params).fit(problems.questions)
            except ValueError:  # every word below min_df: no vocabulary at all
                raise InputError(f"no word occurs in {self.params['min_df']}+ questions; lower min_df", "min_df") from None
        if self._weight("meta"):
            self.meta = MetadataEncoder.fit(problems)
            self.meta = self.meta if self.meta.width else None  # training data without level/subject
        features = self._features(problems)
        if not features:
            raise InputError("no feature block is usable (positive weight and present in the data)", "block_weights")
        # Stored at the precision they are saved with, so a loaded model predicts what this one does.
        self.train = {b: (x.astype(np.float16).astype(np.float32) if b != "tfidf" else _half(x)) for b, x in features.items()}
        distance = self._distance(self.train)
        self.intercept = targets.mean(axis=0)
        gammas = [float(g) for g in self.params["gammas"]]
        chosen = loo_select((np.exp(-g * distance) for g in gammas), targets - self.intercept, np.logspace(*self.params["alphas"]))
        self.gamma = np.array([gammas[index] for index, _, _ in chosen])
        self.alpha = np.array([alpha for _, alpha, _ in chosen])
        self.dual = np.stack([dual for _, _, dual in chosen], -1)

    def _predict(self, problems):
        out = np.empty((len(problems), 2))
        for start in range(0, len(problems), CHUNK):  # bounds the distance matrix at CHUNK x n
            rows = slice(start, start + CHUNK)
            distance = self._distance(self._features(problems.subset(range(len(problems))[rows])))
            for j in range(2):
                out[rows, j] = np.exp(-self.gamma[j] * distance) @ self.dual[:, j] + self.intercept[j]
        return out

    def _save_weights(self, folder: Path) -> dict:
        arrays = {"intercept": self.intercept, "dual": self.dual.astype(np.float32)}
        if self.pca_components is not None:
            arrays.update(pca_components=self.pca_components.astype(np.float32), pca_mean=self.pca_mean.astype(np.float32),
                          train_embedding=self.train["embedding"].astype(np.float16))
        if self.tfidf is not None:
            arrays.update(save_tfidf(folder, self.tfidf))
            x = self.train["tfidf"]
            arrays.update(tfidf_data=x.data.astype(np.float16), tfidf_indices=x.indices.astype(np.int32),
                          tfidf_indptr=x.indptr.astype(np.int32))
        if self.meta is not None:
            arrays["train_meta"] = self.train["meta"].astype(np.float16)
        np.savez_compressed(folder / "weights.npz", **arrays)
        return {"gamma": self.gamma.tolist(), "alpha": self.alpha.tolist(), "meta": self.meta.state() if self.meta else None}

    def _load_weights(self, folder: Path, state: dict) -> None:
        from scipy.sparse import csr_matrix

        weights = Weights(folder / "weights.npz")
        self.intercept = weights.take("intercept", (2,))
        self.dual = weights.take("dual", (None, 2))
        rows = len(self.dual)
        self.gamma, self.alpha = np.asarray(state["gamma"], float), np.asarray(state["alpha"], float)
        self.train = {}
        self.pca_components = self.pca_mean = self.tfidf = None
        if "pca_components" in weights:
            self.pca_components = weights.take("pca_components", (None, DIMENSION))
            self.pca_mean = weights.take("pca_mean", (DIMENSION,))
            self.train["embedding"] = weights.take("train_embedding", (rows, len(self.pca_components))).astype(np.float32)
        if "idf" in weights:
            idf = weights.take("idf", (None,))
            self.tfidf = load_tfidf(folder, self.params, idf)
            data = weights.take("tfidf_data", (None,)).astype(np.float32)
            indices = weights.take("tfidf_indices", (len(data),), integer=True)
            indptr = weights.take("tfidf_indptr", (rows + 1,), integer=True)
            try:  # as many entries as indices, indices within the vocabulary, row pointers in order
                matrix = csr_matrix((data, indices, indptr), shape=(rows, len(idf)))
                matrix.check_format(full_check=True)
            except ValueError as exc:
                raise weights.error("tfidf_indices", f"not a valid sparse matrix with tfidf_indptr ({exc})") from None
            self.train["tfidf"] = matrix
        self.meta = MetadataEncoder(**state["meta"]) if state["meta"] else None
        if self.meta is not None:
            self.train["meta"] = weights.take("train_meta", (rows, self.meta.width)).astype(np.float32)
        elif "train_meta" in weights:  # dropping the block would change every prediction
            raise weights.error("train_meta", "present, but the config's state.meta is null")
        if not self.train:
            raise weights.error("train_*", "no feature block: the model would predict from nothing")


def _half(x):
    """A sparse matrix with its values rounded to float16 (kept as float32 for arithmetic)."""
    x = x.tocsr().astype(np.float32)
    x.data = x.data.astype(np.float16).astype(np.float32)
    return x
