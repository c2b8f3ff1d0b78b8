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

import numpy as np
from scipy.special import expit

from ..errors import InputError
from .base import Predictor, to_z
from .baselines import MetadataEncoder, load_tfidf, ridge_cv, save_tfidf, tfidf_vectorizer
from .data import Problems
from .encoder import MODEL_NAME, embed, static_embed

__all__ = ["EmbeddingPredictor"]


class EmbeddingPredictor(Predictor):
    """Ridge regression on sentence embeddings, TF-IDF and metadata of each question."""

    kind = "embedding"
    defaults = {
        "embedding_model": MODEL_NAME,
        "embedding": "static",
        #: Truncation of the contextual embedding (static embeddings read the whole text).
        "max_seq_length": 256,
        "block_weights": {"embedding": 1.0, "tfidf": 1.0, "meta": 1.0},
        "ngram_range": [1, 2],
        "min_df": 2,
        "lsa_dims": 400,
        "alphas": [-3, 2, 21],
        #: "moments": regress the moments themselves; "logit": regress logit(mean), log(std).
        "target": "moments",
    }

    def __init__(self, **params):
        super().__init__(**params)
        if self.params["embedding_model"] != MODEL_NAME:
            raise InputError(f"only {MODEL_NAME} embeddings are supported, got {self.params['embedding_model']!r}", "embedding_model")
        if self.params["embedding"] not in ("static", "contextual"):
            raise InputError(f"embedding must be 'static' or 'contextual', got {self.params['embedding']!r}", "embedding")
        if self.params["target"] not in ("moments", "logit"):
            raise InputError(f"target must be 'moments' or 'logit', got {self.params['target']!r}", "target")
        unknown = set(self.params["block_weights"]) - {"embedding", "tfidf", "meta"}
        if unknown:
            raise InputError(f"unknown feature block(s): {', '.join(sorted(unknown))}", "block_weights")

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
            raise InputError("no feature block has a positive weight", "block_weights")
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
        with np.load(folder / "weights.npz") as data:
            arrays = {k: data[k].astype(float) for k in data.files}
        self.intercept = arrays["intercept"]
        self.alpha = np.asarray(state["alpha"])
        self.w_embedding = arrays.get("w_embedding")
        self.w_tfidf = arrays.get("w_tfidf")
        self.tfidf = None
        if self.w_tfidf is not None:
            self.tfidf = load_tfidf(folder, self.params, arrays["idf"])
        self.meta = MetadataEncoder(**state["meta"]) if state["meta"] else None
        self.w_meta = arrays.get("w_meta") if self.meta else None
