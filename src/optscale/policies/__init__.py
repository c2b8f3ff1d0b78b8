"""Stopping-and-selection policies, one interface for offline replay and live sampling.

The prior sources (``ConstantPriors``, ``FilePriors`` ...) live in :mod:`optscale.priors` and
are re-exported here, where users have always imported them from.
"""

from .base import Decision, Episode, Outcome, Policy, Prior, Problem, ReplayBatch, ReplayDecisions, Sample
from .beacon import Beacon
from .boinf import BestOfInfinity
from .common import PolicyBase
from .consistency import AdaptiveSC, EarlyStoppingSC
from .deepconf import DeepConf
from .fixed import BestOfN, SelfConsistency
from .learned import Learned
from .pandora import Pandora
from .threshold import AgreeThreshold, FirstPass
from .optscale import OptScale0, OptScaleT, SequentialOptScale, paper_peek
from ..priors import ConstantPriors, FilePriors, PriorArrays, PriorSource
from .registry import POLICIES, make_policy, parse_settings, policy_settings_schema, settings_help
from .selection import SELECTIONS, Selection, select

__all__ = [
    "Decision", "Episode", "Outcome", "Policy", "Prior", "Problem", "ReplayBatch", "ReplayDecisions", "Sample",
    "PolicyBase", "AdaptiveSC", "EarlyStoppingSC", "BestOfN", "SelfConsistency", "OptScale0", "OptScaleT",
    "SequentialOptScale", "paper_peek", "FirstPass", "AgreeThreshold", "DeepConf", "BestOfInfinity", "Pandora",
    "Beacon", "Learned", "ConstantPriors", "FilePriors", "PriorArrays", "PriorSource",
    "POLICIES", "make_policy", "parse_settings", "policy_settings_schema", "settings_help",
    "SELECTIONS", "Selection", "select",
]
