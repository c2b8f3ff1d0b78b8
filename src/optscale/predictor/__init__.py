"""The prior predictor behind OptScale^t: problem text -> distribution of its verifier scores.

Kinds (one interface: ``fit``, ``predict``, ``save``, ``load``): ``constant`` and ``metadata``
baselines, ``embedding`` (MiniLM + TF-IDF + level/subject ridge, CPU), ``kernel`` (kernel
ridge on the same kinds of features, CPU; the packaged default) and ``transformer`` (the
paper's fine-tuned decoder, GPU). :class:`PredictorPriors` turns predictions into priors for
:func:`optscale.fit_map`.

The packaged default model is reproduced with one command from a source checkout::

    optscale predictor train --kind kernel \\
        --data ../shared/data/score-moments/math_train.jsonl \\
        --out src/optscale/data/predictor/default --force
"""

from __future__ import annotations

from .base import FORMAT_VERSION, KINDS, Prediction, Predictor, cross_validate, load
from .baselines import ConstantPredictor, MetadataPredictor
from .data import SHARED_DATA_ENV, Problems, TrainingSet, load_problems, load_training, shared_data_dir
from .embedding import EmbeddingPredictor
from .kernel import KernelPredictor
from .priors import DEFAULT_MODEL, PredictorPriors, load_default, prior_rows
from .transformer import TransformerPredictor

__all__ = [
    "FORMAT_VERSION", "KINDS", "Prediction", "Predictor", "cross_validate", "load",
    "ConstantPredictor", "MetadataPredictor", "EmbeddingPredictor", "KernelPredictor", "TransformerPredictor",
    "SHARED_DATA_ENV", "Problems", "TrainingSet", "load_training", "shared_data_dir",
    "DEFAULT_MODEL", "PredictorPriors", "load_default", "prior_rows",
]
