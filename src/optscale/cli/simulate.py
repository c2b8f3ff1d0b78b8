"""``optscale simulate``: write a semi-synthetic pool in which OptScale's score model holds exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import InputError
from ..io import ensure_out_dir
from ..pools import write_pool
from ..simulate import MODEL_KEYS, VERIFIERS, Population, simulate_pool
from .flags import flags

#: Model constants with a flag of their own; every other one is set with ``--set NAME=VALUE``.
_OWN_FLAGS = (
    "discrimination", "discrimination_sd", "intercept", "difficulty_spread", "no_answer_rate", "wrong_answers",
)


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to the root app."""
    app.command("simulate")(simulate)


#: Library names -> flags of ``simulate`` (see :func:`optscale.cli.flags.flags`).
SIMULATE_FLAGS = {
    "n_problems": "--problems", "n_samples": "--samples", "seed": "--seed", "levels": "--level", "settings": "--set",
    "verifier": "--verifier", "out": "--out",
    **{name: f"--set {name}" for name in MODEL_KEYS}, **{name: "--" + name.replace("_", "-") for name in _OWN_FLAGS},
}


def _settings(pairs: list[str], given: dict[str, float | None]) -> dict[str, float]:
    """Merge ``--set NAME=VALUE`` pairs with the dedicated flags that were given."""
    overrides = {name: value for name, value in given.items() if value is not None}
    for pair in pairs:
        name, sep, text = (part.strip() for part in pair.partition("="))
        if not sep or name not in MODEL_KEYS:
            raise InputError(f"expected NAME=VALUE with NAME one of {', '.join(MODEL_KEYS)}; got {pair!r}", "settings")
        if name in overrides:
            raise InputError(f"{name} is set twice", "settings")
        try:
            overrides[name] = float(text)
        except ValueError:
            raise InputError(f"{name}: expected a number, got {text!r}", "settings") from None
    return overrides


def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Pool to write (JSON Lines, one problem per line).")],
    problems: Annotated[int, typer.Option(help="Number of problems (>= 1).")] = 500,
    samples: Annotated[int, typer.Option(help="Samples per problem (>= 1).")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed (>= 0); the same seed writes the same pool.")] = 0,
    discrimination: Annotated[
        float | None,
        typer.Option(help="Verifier skill at ranking a problem's answers (>= 0; 0: scores say nothing about them)."),
    ] = None,
    discrimination_sd: Annotated[
        float | None, typer.Option(help="Spread of that skill across problems (>= 0); large values add reward hacking.")
    ] = None,
    intercept: Annotated[
        float | None, typer.Option(help="Logit pass rate of an average problem at its mean score; lower is harder.")
    ] = None,
    difficulty_spread: Annotated[
        float | None, typer.Option(help="Spread of that logit across problems (>= 0).")
    ] = None,
    no_answer_rate: Annotated[
        float | None, typer.Option(help="Share of wrong samples that give no answer, in [0, 1].")
    ] = None,
    wrong_answers: Annotated[
        int | None, typer.Option(help="Distinct wrong answers per problem (1 to 10,000); fewer makes majority votes "
                                      "riskier.")
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option("--set", help=f"NAME=VALUE for any model constant, repeatable: {', '.join(MODEL_KEYS)}."),
    ] = None,
    level: Annotated[
        list[int] | None, typer.Option("--level", help="Only problems of this difficulty level (1-5), repeatable.")
    ] = None,
    population: Annotated[
        Path | None, typer.Option(help="Population JSON (default: the packaged one fitted to MATH).")
    ] = None,
    verifier: Annotated[
        str, typer.Option(help=f"Verifier variant: {', '.join(VERIFIERS)} (weak: scores less informative of "
                               "correctness; see optscale.simulate). Flags and --set override its constants.")
    ] = "default",
) -> None:
    """Write a semi-synthetic pool: real-looking problems whose scores are exactly truncated-normal.

    Defaults mimic DeepSeek-R1-Distill-Qwen-7B with a PRM on MATH500; the model is in optscale.simulate.
    """
    given = {
        "discrimination": discrimination, "discrimination_sd": discrimination_sd, "intercept": intercept,
        "difficulty_spread": difficulty_spread, "no_answer_rate": no_answer_rate, "wrong_answers": wrong_answers,
    }
    names = {**SIMULATE_FLAGS, **{name: f"--set {name}" for name in _OWN_FLAGS if given[name] is None}}
    with flags(names):
        # The output path first: a folder or an unwritable place is refused before any simulation.
        if out.exists() and out.is_dir():
            raise InputError(f"{out} is a folder; give the pool's file name (e.g. {out / 'pool.jsonl'})", "out")
        ensure_out_dir(out.parent, "out")
        overrides = _settings(setting or [], given)
        pop = Population.load(population)
        pool = simulate_pool(problems, samples, seed, pop, levels=level, verifier=verifier, **overrides)
        write_pool(out, pool)
    draws = [sample for problem in pool for sample in problem.samples]
    best = sum(max(problem.samples, key=lambda s: s.score).correct for problem in pool) / len(pool)
    message = (
        f"wrote {len(pool)} problems x {samples} samples to {out}: accuracy per sample"
        f" {sum(s.correct for s in draws) / len(draws):.3f}, best-of-{samples} {best:.3f},"
        f" {sum(s.tokens for s in draws) / len(draws):.0f} tokens per sample"
    )
    Console().print(message, highlight=False, markup=False)
