"""Stopping-and-selection policies, one interface for offline replay and live sampling.

Each policy registers itself where it is defined (``@register_policy``); importing this package
imports the built-in ones. Other packages add policies through entry points of the group
``optscale.policies`` (see :mod:`optscale.policies.registry`).

The prior sources (``ConstantPriors``, ``FilePriors`` ...) live in :mod:`optscale.priors` and
are re-exported here, where users have always imported them from.
"""

from .base import Decision, Episode, Outcome, Policy, Prior, Problem, ReplayBatch, ReplayDecisions, Sample
from .common import PolicyBase
from .registry import POLICIES, make_policy, parse_settings, policy_settings_schema, register_policy, settings_help
from .selection import SELECTIONS, Selection, select
from ..priors import ConstantPriors, FilePriors, PriorArrays, PriorSource

# The built-in policies, imported in the order listings show them (after POLICIES' LISTED_FIRST).
from .fixed import BestOfN, SelfConsistency
from .optscale import OptScale0, OptScaleT, SequentialOptScale, paper_peek
from .consistency import AdaptiveSC, EarlyStoppingSC
from .threshold import AgreeThreshold, FirstPass
from .deepconf import DeepConf
from .boinf import BestOfInfinity
from .learned import Learned
from .pandora import Pandora
from .beacon import Beacon

__all__ = [
    "Decision", "Episode", "Outcome", "Policy", "Prior", "Problem", "ReplayBatch", "ReplayDecisions", "Sample",
    "PolicyBase", "AdaptiveSC", "EarlyStoppingSC", "BestOfN", "SelfConsistency", "OptScale0", "OptScaleT",
    "SequentialOptScale", "paper_peek", "FirstPass", "AgreeThreshold", "DeepConf", "BestOfInfinity", "Pandora",
    "Beacon", "Learned", "ConstantPriors", "FilePriors", "PriorArrays", "PriorSource",
    "POLICIES", "make_policy", "parse_settings", "policy_settings_schema", "register_policy", "settings_help",
    "SELECTIONS", "Selection", "select",
]
