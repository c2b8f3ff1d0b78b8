"""The CLI's commands by name: the module that defines each, and its one-line help.

The root app lists commands from this table, so ``optscale --help`` imports no command
module (and none of the numeric, plotting or model libraries behind them); a command's module
is imported only when that command runs or its own ``--help`` is asked for. Each module
exposes ``register(app)``; ``tests/test_layers.py`` checks that the one-line help here is the
first line of each command's own help.
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    module: str  #: ``optscale.cli.<module>``, whose ``register(app)`` adds the command
    help: str  #: the first line of the command's help


COMMANDS: dict[str, Entry] = {
    "replay": Entry("offline", "Replay one policy over a stored pool in several sample orders and compare it with "
                               "fixed-N BoN."),
    "sweep": Entry("offline", "Grid-search (s_min, alpha) per budget on a calibration split; report the choice on "
                              "held-out problems."),
    "demo": Entry("offline", "Simulate a pool from real PRM score statistics, replay every policy, write a report."),
    "nstar": Entry("offline", "Print the least N with Pr(best of N >= s_min) >= alpha for one (mu, sigma)."),
    "table": Entry("offline", "Combine result files into one table shaped like the paper's (method x budget, per "
                              "dataset)."),
    "convert": Entry("pools", "Convert a flat table of samples into a completion pool."),
    "validate": Entry("pools", "Check a pool line by line (stopping at the first error) and summarise it."),
    "run": Entry("live", "Answer every problem with as few samples as the policy needs, live against a server."),
    "pool": Entry("live", "Draw and score the full budget for every problem: a pool (OUT/pool.jsonl) for offline "
                          "replay."),
    "simulate": Entry("simulate", "Write a semi-synthetic pool: real-looking problems whose scores are exactly "
                                  "truncated-normal."),
    "serve": Entry("serve", "Serve an OpenAI-compatible API that samples each request adaptively from an upstream "
                            "server."),
    "policy": Entry("policy", "Show each policy's settings; fit the learned stopping table on a calibration pool."),
    "predictor": Entry("predictor", "Train, apply and evaluate the predictor of per-problem score distributions."),
}
