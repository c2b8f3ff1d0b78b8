"""``optscale policy``: each policy's settings (``settings``) and the ``learned`` policy's fit (``fit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import InputError
from ..io import check_out_file
from .flags import flags

console = Console()
policy_app = typer.Typer(help="Show each policy's settings; fit the learned stopping table on a calibration pool.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``policy`` sub-app to the root app."""
    app.add_typer(policy_app, name="policy")


#: Library names -> flags of ``policy fit`` (see :func:`optscale.cli.flags.flags`).
FIT_FLAGS = {"n_max": "--n-max", "budget": "--budget", "lam": "--lambda", "select": "--select", "bins": "--bins",
             "agree_cap": "--agree-cap", "length_bins": "--length-bins", "shrink": "--shrink", "orders": "--orders",
             "seed": "--seed", "out": "--out", "features": "--features", "folds": "--folds", "labels": "--labels"}


@policy_app.command("fit")
def fit(
    pool: Annotated[Path, typer.Argument(help="calibration pool (JSON Lines): problems like those the table will "
                                              "serve, each with at least --n-max samples; or a traffic folder "
                                              "(optscale serve --traffic-dir, with --labels consensus)")],
    n_max: Annotated[int, typer.Option("--n-max", "-n", help="most samples per problem (the table serves only this)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="table to write (JSON)")],
    budget: Annotated[Optional[float], typer.Option(
        help="share of Best-of-N_max's mean tokens to spend on calibration, in (0, 1]; picks lambda (two "
             "neighbouring lambdas mixed per problem so that the share lands on it)")] = None,
    lam: Annotated[Optional[float], typer.Option("--lambda", help="cost of one token in accuracy (>= 0)")] = None,
    select: Annotated[str, typer.Option(
        help="selection rule the table serves: best, majority, weighted, or auto (chosen by cross-validation "
             "among those the pool supports)")] = "auto",
    features: Annotated[str, typer.Option(
        help="state features: auto (chosen by cross-validation, see docs/policies.md), n (n only: the best fixed "
             "N), or a comma-separated list of score, agree, margin, consensus, length")] = "auto",
    folds: Annotated[int, typer.Option(help="folds of the cross-validation over calibration problems")] = 5,
    bins: Annotated[Optional[int], typer.Option(
        help="quantile bins of the best score so far (default: 4 or 8, chosen by cross-validation)")] = None,
    agree_cap: Annotated[int, typer.Option("--agree-cap", help="cap on the count of samples sharing the answer "
                                                               "(feature agree)")] = 6,
    consensus: Annotated[bool, typer.Option(
        " /--no-consensus", help="never use the feature 'the returned answer is also the most frequent and "
                                 "best-scored'")] = True,
    length_bins: Annotated[int, typer.Option("--length-bins", help="quantile bins of the returned sample's tokens "
                                                                   "(feature length)")] = 3,
    shrink: Annotated[Optional[float], typer.Option(
        help="pseudo-rows pulling each state toward its coarser state (default: 5, 20 or 80, chosen by "
             "cross-validation)")] = None,
    orders: Annotated[int, typer.Option("--orders", "-r", help="sample orders per problem used as calibration rows")] = 4,
    seed: Annotated[int, typer.Option(help="seed of the shuffled orders and of the folds")] = 0,
    labels: Annotated[str, typer.Option(
        help="where a sample's 'correct' comes from: gold (graded against its problem's gold answer) or consensus "
             "(its answer equals the one the table's rule returns on the problem's first --n-max samples: no gold "
             "needed, e.g. traffic; with --select auto each candidate rule is judged by its own consensus)")] = "gold",
) -> None:
    """Fit the learned policy's optimal-stopping table on a calibration pool and write it as JSON.

    Rule, features and shrinkage are chosen by K-fold cross-validation (see docs/policies.md).
    With --labels consensus the table is fitted on traffic without gold: it learns to stop once
    the answer will not change (see docs/policies.md, "Labels: gold or consensus").

    Use it with --policy learned --set table=OUT in replay, sweep and run.
    """
    from ..policies.learned.cv import fit_auto
    from ..pools import pool_sha256
    from ..replay import check_labels, check_orders, check_seed, read_pool_arrays

    with flags(FIT_FLAGS):
        if (budget is None) == (lam is None):
            raise InputError("give exactly one of --budget and --lambda", "budget")
        check_orders(orders)
        check_seed(seed)
        gold = check_labels(labels) == "gold"
        check_out_file(out, "out", inputs=[pool])
        # read line by line into arrays (no record kept): a traffic folder can hold many episodes
        batch = read_pool_arrays(pool, grade_missing=gold, require_gold=gold).batch(orders, seed)
        source = {"pool": pool.name, "sha256": pool_sha256(pool)}
        table = fit_auto(batch, n_max, select, features, folds, lam=lam, budget=budget, bins=bins, shrink=shrink,
                         agree_cap=agree_cap, length_bins=length_bins, consensus=consensus, source=source, seed=seed,
                         labels=labels)
        table.save(out)
    f = table.fitted
    cost = table.cost
    cv = f["cross_validated"]
    console.print(f"wrote {out}: n_max {table.n_max}, {cv['chosen']}, lambda {table.lam:.6g} per {cost[:-1]}"
                  + (f" (mixed with {table.mix_lam:.6g} on {100 * table.mix_share:.0f}% of problems)"
                     if table.mix_stop is not None else "")
                  + f"; on the calibration pool ({batch.shape[0]} problems x {orders} orders, in-sample) accuracy "
                  f"{f['accuracy']:.4f} with {f['mean_samples']:.2f} samples, {100 * f['share_of_bon']:.1f}% of "
                  f"fixed-{table.n_max}'s {cost}", highlight=False, markup=False)
    console.print(cv["summary"], highlight=False, markup=False)
    if labels == "consensus":
        console.print(f"labels: consensus (no gold): accuracy above is agreement with the {table.select} answer of "
                      f"all {table.n_max} samples; errors that full sampling makes are not seen", highlight=False,
                      markup=False)


@policy_app.command("settings")
def settings(
    names: Annotated[Optional[list[str]], typer.Argument(help="policies to show (default: every registered one)",
                                                         show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print each policy's settings as JSON Schema")] = False,
) -> None:
    """List each policy's --set settings: type, default, allowed values and what it does."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from ..policies import POLICIES, policy_settings_schema

    with flags({"policy": "NAME"}):
        schemas = {name: policy_settings_schema(name) for name in names or list(POLICIES)}
    if as_json:
        print(json.dumps(schemas, indent=2))
        return
    for name, schema in schemas.items():
        table = Table("setting", "type", "default", "allowed", "meaning", title_justify="left", show_lines=False,
                      title=escape(f"{name}: {schema['description']}"))
        for key, prop in schema["properties"].items():
            table.add_row(*map(escape, (key, *_described(prop, schema.get("$defs", {})))))
        console.print(table)


def _described(prop: dict, defs: dict) -> tuple[str, str, str, str]:
    """(type, default, allowed, meaning) of one JSON Schema property, for the settings table."""
    branches = [a for a in prop.get("anyOf", []) if a.get("type") != "null"]
    if len(branches) == 1:  # an optional setting: its one non-null branch holds the type and limits
        prop = {**{k: v for k, v in prop.items() if k != "anyOf"}, **branches[0]}
    ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
    target = {**defs.get(ref.rsplit("/", 1)[-1], {}), **prop} if ref else prop
    kinds = [a.get("type", "") for a in target.get("anyOf", [])] or [target.get("type", "any")]
    kind = " or ".join(k for k in kinds if k and k != "null") or "any"
    allowed = ", ".join(map(str, target["enum"])) if "enum" in target else ""
    low, high = target.get("minimum", target.get("exclusiveMinimum")), target.get("maximum",
                                                                                  target.get("exclusiveMaximum"))
    left, right = ("(" if "exclusiveMinimum" in target else "["), (")" if "exclusiveMaximum" in target else "]")
    if low is not None and high is not None:
        allowed = f"{left}{low}, {high}{right}"
    elif low is not None or high is not None:
        allowed = f"{'>' if left == '(' else '>='} {low}" if high is None else f"{'<' if right == ')' else '<='} {high}"
    default = "required" if "default" not in target else _json_text(target["default"])
    return kind, default, allowed, target.get("description", "")


def _json_text(value) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value
