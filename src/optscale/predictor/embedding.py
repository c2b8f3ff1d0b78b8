"""The linear CPU predictor: MiniLM sentence embeddings + TF-IDF + level/subject, one ridge regression.

Three feature blocks, each weighted by ``block_weights``:

- ``embedding``: the all-MiniLM-L6-v2 embedding of the question, ``static`` (mean of distilled
  token vectors, fast) or ``contextual`` (the full sentence-transformers pass), see
  :mod:`.encoder`;
- ``tfidf``: word 1-2-gram TF-IDF of the question, reduced by truncated SVD (LSA) so that the
  ridge stays dense and its leave-one-out penalty search stays cheap;
- ``meta``: one-hot MATH level and subject, averaged where a problem has none.

The penalty of each target is chosen by efficient leave-one-out cross-validation. After
fitting, the SVD is folded into the TF-IDF weights, so a saved model is three small weight
matrices plus the TF-IDF vocabulary: a few hundred KB, the embedding model not included.
A block weight of 0 drops that block (``embedding: 0`` needs no embedding model at all).

The packaged default is :mod:`.kernel` instead, about 4 points of RMSE reduction ahead on MATH
for a model about three times the size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, StrictInt
from scipy.special import expit

from ..errors import InputError
from .base import Predictor, to_z
from .baselines import MetadataEncoder, load_tfidf, ridge_cv, save_tfidf, tfidf_vectorizer
from .data import Problems
from .encoder import DIMENSION, MODEL_NAME, embed, static_embed
from .validation import (BLOCK_WEIGHTS, LOG_GRID, NGRAM_RANGE, BlockWeights, EncoderState, LogGrid, NgramRange, Params,
                         Positive, State, Weights)

__all__ = ["EmbeddingPredictor"]

#: Longest contextual input: all-MiniLM-L6-v2 has 512 positions.
MAX_SEQ_LENGTH = 512
#: Most LSA dimensions: the SVD's components are ``lsa_dims x vocabulary`` floats.
MAX_LSA_DIMS = 2048


class EmbeddingParams(Params):
    embedding_model: Literal["all-MiniLM-L6-v2"] = Field(MODEL_NAME, description=f"{MODEL_NAME!r} (the only one supported)")
    embedding: Literal["static", "contextual"] = Field("static", description="'static' or 'contextual'")
    #: Truncation of the contextual embedding (static embeddings read the whole text).
    max_seq_length: StrictInt = Field(256, ge=1, le=MAX_SEQ_LENGTH,
                                      description=f"tokens the contextual embedding reads, an integer from 1 to {MAX_SEQ_LENGTH}")
    block_weights: BlockWeights = Field({"embedding": 1.0, "tfidf": 1.0, "meta": 1.0}, description=BLOCK_WEIGHTS)
    ngram_range: NgramRange = Field((1, 2), description=NGRAM_RANGE)
    min_df: StrictInt = Field(2, ge=1, description="fewest questions a word must occur in, an integer >= 1")
    lsa_dims: StrictInt = Field(400, ge=1, le=MAX_LSA_DIMS,
                                description=f"SVD dimensions of the TF-IDF block, an integer from 1 to {MAX_LSA_DIMS}")
    alphas: LogGrid = Field((-3, 2, 21), description=LOG_GRID + " (the ridge penalty grid)")
    #: "moments": regress the moments themselves; "logit": regress logit(mean), log(std).
    target: Literal["moments", "logit"] = Field("moments", description="'moments' or 'logit'")


class EmbeddingState(State):
    alpha: tuple[Positive, Positive]
    meta: EncoderState | None


class EmbeddingPredictor(Predictor):
    """Ridge regression on sentence embeddings, TF-IDF and metadata of each question."""

    kind = "embedding"
    params_model = EmbeddingParams
    state_model = EmbeddingState

    def _weight(self, block: str) -> float:
        return float(self.params["block_weights"].get(block, 0.0))

    def _embeddings(self, problems: Problems) -> np.ndarray:
        if self.params["embedding"] == "static":
            return static_embed(problems.questions)
        return embed(problems.questions, self.params["max_seq_length"])

    def _fit(self, problems, targets):
        from sklearn.decomposition import TruncatedSVD

        we, wt, wm = self._weight("embedding"), self._weight("tfidf"), self._weight("meta")
        blocks: dict[str, np.ndarray] = {}
        if we:
            blocks["embedding"] = we * self._embeddings(problems)
        self.tfidf = tfidf_vectorizer(self.params) if wt else None
        if self.tfidf is not None:
            tf = self.tfidf.fit_transform(problems.questions)
            svd = TruncatedSVD(max(1, min(self.params["lsa_dims"], tf.shape[0] - 1, tf.shape[1] - 1)), random_state=0)
            blocks["tfidf"] = wt * svd.fit_transform(tf)
        self.meta = MetadataEncoder.fit(problems) if wm else None
        if self.meta is not None and not self.meta.width:
            self.meta = None  # training data without level/subject
        if self.meta is not None:
            blocks["meta"] = wm * self.meta.transform(problems)
        if not blocks:
            raise InputError("no feature block is usable (positive weight and present in the data)", "block_weights")
        y = to_z(*targets.T) if self.params["target"] == "logit" else targets
        ridge = ridge_cv(np.hstack(list(blocks.values())), y, self.params["alphas"])
        self.intercept, self.alpha = ridge.intercept_, ridge.alpha_
        # Per-block weights of the raw features: block weights and the SVD folded in.
        cuts = np.cumsum([b.shape[1] for b in blocks.values()])[:-1]
        parts = dict(zip(blocks, np.split(ridge.coef_.T, cuts)))
        self.w_embedding = we * parts["embedding"] if "embedding" in parts else None
        self.w_tfidf = wt * (svd.components_.T @ parts["tfidf"]) if "tfidf" in parts else None
        self.w_meta = wm * parts["meta"] if "meta" in parts else None

    def _predict(self, problems):
        z = np.tile(self.intercept, (len(problems), 1))
        if self.w_embedding is not None:
            z += self._embeddings(problems) @ self.w_embedding
        if self.w_tfidf is not None:
            z += self.tfidf.transform(problems.questions) @ self.w_tfidf
        if self.w_meta is not None:
            z += self.meta.transform(problems) @ self.w_meta
        if self.params["target"] == "logit":
            return np.stack([expit(z[:, 0]), np.exp(z[:, 1])], -1)
        return z

    def _save_weights(self, folder: Path) -> dict:
        arrays = {"intercept": self.intercept}
        if self.w_embedding is not None:
            arrays["w_embedding"] = self.w_embedding
        if self.w_tfidf is not None:
            arrays.update(w_tfidf=self.w_tfidf, **save_tfidf(folder, self.tfidf))
        if self.w_meta is not None:
            arrays["w_meta"] = self.w_meta
        np.savez_compressed(folder / "weights.npz", **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
        return {"alpha": [float(a) for a in np.atleast_1d(self.alpha)], "meta": self.meta.state() if self.meta else None}

    def _load_weights(self, folder: Path, state: dict) -> None:
        weights = Weights(folder / "weights.npz")
        self.intercept = weights.take("intercept", (2,))
        self.alpha = np.asarray(state["alpha"])
        self.w_embedding = weights.take("w_embedding", (DIMENSION, 2)) if "w_embedding" in weights else None
        self.w_tfidf = self.tfidf = None
        if "w_tfidf" in weights:
            self.w_tfidf = weights.take("w_tfidf", (None, 2))
            self.tfidf = load_tfidf(folder, self.params, weights.take("idf", (len(self.w_tfidf),)))
        self.meta = MetadataEncoder(**state["meta"]) if state["meta"] else None
        self.w_meta = weights.take("w_meta", (self.meta.width, 2)) if self.meta else None
        if self.meta is None and "w_meta" in weights:  # dropping the block would change every prediction
            raise weights.error("w_meta", "present, but the config's state.meta is null")
