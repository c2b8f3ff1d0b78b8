"""``optscale predictor train | predict | evaluate``: the prior predictor behind OptScale^t."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from ..io import check_out_file, ensure_out_dir, write_jsonl, write_text
from ..predictor import (DEFAULT_MODEL, KINDS, SHARED_DATA_ENV, Problems, load, load_training, prior_rows,
                         shared_data_dir)
from ..predictor.base import check_seed, metrics
from ..predictor.evaluate import compare_file, cross_validated
from ..report.plots import calibration_plot
from .flags import flags

console = Console()
predictor_app = typer.Typer(help="Train, apply and evaluate the predictor of per-problem score distributions.",
                            no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``predictor`` sub-app to the root app."""
    app.add_typer(predictor_app, name="predictor")


#: Library names -> this module's flags (see :func:`optscale.cli.flags.flags`).
FLAGS = {"data": "--data", "kind": "--kind", "params": "--param", "folds": "--folds", "out": "--out",
         "plot": "--plot", "json": "--json", "seed": "--seed"}


def _default_data(data: Path | None) -> Path:
    if data is not None:
        return data
    shared = shared_data_dir()
    if shared is None:
        raise InputError(f"none given, and ${SHARED_DATA_ENV} names no folder (the shared data with "
                         "score-moments/math_train.jsonl)", "data")
    return shared / "score-moments" / "math_train.jsonl"


def _params(pairs: list[str]) -> dict:
    """``NAME=VALUE`` pairs; VALUE is JSON where it parses (numbers, lists, objects), else a string.

    The kind validates the values; a name given twice is refused rather than the last one silently winning.
    """
    out = {}
    for pair in pairs:
        name, sep, text = (part.strip() for part in pair.partition("="))
        if not sep or not name:
            raise InputError(f"expected NAME=VALUE, got {pair!r}", "params")
        if name in out:
            raise InputError(f"{name} is given twice; give it once", "params")
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    return out


def _metrics_row(table: Table, name: str, m: dict) -> None:
    """One row per moment: errors, and the coverage of the 90% predictive interval where there is one."""
    for moment in ("mean", "std"):
        cover = m["coverage"][moment]["0.9"] if "coverage" in m else None
        table.add_row(name, moment, *(f"{m[moment][e]:.4f}" for e in ("mae", "rmse", "r2")),
                      "-" if cover is None else f"{cover:.2f}")


def _table(title: str) -> Table:
    table = Table(title=title)
    for col in ("predictor", "score", "MAE", "RMSE", "R2", "90% interval coverage"):
        table.add_column(col, justify="right" if col[0].isupper() or col[0].isdigit() else "left")
    return table


@predictor_app.command("train")
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write (config.json, weights, metrics.json).")],
    data: Annotated[Path | None, typer.Option(help="Training JSONL: question + score_mean/score_std, or samples with scores. "
                                                   "Default: the MATH score moments in $OPTSCALE_SHARED_DATA.")] = None,
    kind: Annotated[str, typer.Option(help=f"Predictor kind: {', '.join(KINDS)}.")] = "kernel",
    param: Annotated[list[str], typer.Option("--param", help="Hyper-parameter NAME=VALUE (VALUE as JSON), repeatable.")] = [],  # noqa: B006
    folds: Annotated[int, typer.Option(help="Cross-validation folds for the held-out error (>= 2).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite an existing model folder.")] = False,
) -> None:
    """Fit a predictor, validate it on held-out folds, and write a versioned model folder."""
    with flags(FLAGS):
        cls = KINDS.get(kind, "kind")
    # A kind's hyper-parameters are named as given: --param NAME.
    with flags({**FLAGS, **{name: f"--param {name}" for name in cls.defaults}}):
        if (out / "config.json").exists() and not force:
            raise InputError("a model is already there; pass --force to overwrite it", str(out))
        check_seed(seed)
        ensure_out_dir(out, "out")
        data = _default_data(data)
        training = load_training(data)
        model = cls(**_params(param)).fit(training, folds=folds, seed=seed)
        model.metrics["training_data"] = {"file": data.name, "rows": len(training),
                                          "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
        model.save(out, replace=force)
    table = _table(f"{kind} predictor: held-out error ({model.metrics['validation']['rounds']} of {folds} folds)")
    _metrics_row(table, kind, model.metrics["validation"])
    console.print(table)
    console.print(f"prior widths (held-out RMS error of mu, sigma): {model.widths[0]:.4f}, {model.widths[1]:.4f}")
    console.print(f"wrote {out}")


@predictor_app.command("predict")
def predict(
    benchmark: Annotated[Path, typer.Argument(help="Benchmark file (JSON Lines, JSON or CSV) with a question and an "
                                                   "id per problem, as `optscale run` reads it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Priors JSONL to write (readable by OptScale^t's FilePriors).")],
    model: Annotated[Path | None, typer.Option(help="Model folder (default: the packaged predictor).")] = None,
) -> None:
    """Write per-problem priors: predicted score moments, their uncertainty, and (mu, sigma) priors."""
    with flags(FLAGS):
        check_out_file(out, "out", inputs=[benchmark])
        problems = Problems.from_file(benchmark)
        predictor = load(model or DEFAULT_MODEL)
        rows = prior_rows(predictor, problems)
        write_jsonl(out, rows)
    mean = sum(r["score_mean"] for r in rows) / len(rows)
    console.print(f"{len(rows)} problems, average predicted score mean {mean:.3f}, prior widths "
                  f"{predictor.widths[0]:.4f} (mu), {predictor.widths[1]:.4f} (sigma); wrote {out}")


@predictor_app.command("evaluate")
def evaluate(
    data: Annotated[Path | None, typer.Option(help="Labelled JSONL (default: the MATH score moments in "
                                                   "$OPTSCALE_SHARED_DATA).")] = None,
    model: Annotated[Path | None, typer.Option(help="Model folder whose kind and hyper-parameters are evaluated "
                                                    "(default: the packaged predictor).")] = None,
    fitted: Annotated[bool, typer.Option(help="Score the saved model as it is instead of cross-validating its kind "
                                              "(for labelled data it was not trained on).")] = False,
    priors: Annotated[list[Path], typer.Option("--priors", help="Another priors file to score on the labels it covers "
                                                                "(matched by id), repeatable.")] = [],  # noqa: B006
    folds: Annotated[int, typer.Option(help="Cross-validation folds (>= 2).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Calibration plot PNG to write.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
) -> None:
    """MAE, RMSE and R^2 of mean and std vs the constant baseline and other priors files, with calibration."""
    with flags(FLAGS):
        check_seed(seed)
        inputs = [data, *priors]
        for path, where in ((plot, "plot"), (json_out, "json")):
            if path is not None:
                check_out_file(path, where, inputs=inputs)
                inputs.append(path)
        _evaluate(_default_data(data), model, fitted, priors, folds, seed, plot, json_out)


def _evaluate(data: Path, model: Path | None, fitted: bool, priors: list[Path], folds: int, seed: int,
              plot: Path | None, json_out: Path | None) -> None:
    labelled = load_training(data)
    saved = load(model or DEFAULT_MODEL)
    if fitted:
        pred = saved.predict(labelled.problems)
        report = {"mode": "fitted", "rows": len(labelled), "model": metrics(pred, labelled.mean, labelled.std)}
        report["model"]["kind"] = saved.kind
        title = f"{saved.kind} predictor on {data.name} (as trained)"
    else:
        template = type(saved)(**saved.params)
        pred, report = cross_validated(template, labelled, folds, seed)
        report["mode"] = "cross-validated"
        title = f"{saved.kind} predictor on {data.name} ({folds}-fold cross-validation)"
    report["priors_files"] = [compare_file(p, labelled) for p in priors]
    table = _table(title)
    _metrics_row(table, saved.kind, report["model"])
    if "constant" in report:
        _metrics_row(table, "constant", report["constant"])
    for other in report["priors_files"]:
        if "errors" in other:
            _metrics_row(table, Path(other["file"]).name, other["errors"])
    console.print(table)
    if "rmse_reduction_vs_constant" in report:
        red = report["rmse_reduction_vs_constant"]
        console.print(f"RMSE reduction vs constant: mean {100 * red['mean']:.1f}%, std {100 * red['std']:.1f}%")
    label_mean = float(labelled.mean.mean())
    for other in report["priors_files"]:
        note = "" if "errors" in other else " (no labelled problem in common: distribution only)"
        console.print(f"{other['file']}: {other['problems']} problems, {other['labelled_matches']} labelled{note}; "
                      f"average predicted score mean {other['predicted_mean']['mean']:.3f} vs labels' {label_mean:.3f}"
                      + (f"; {other['negative_stds']} negative stds" if other["negative_stds"] else ""))
    if plot is not None:
        calibration_plot(pred, labelled.mean, labelled.std, plot, title)
        console.print(f"wrote {plot}")
    if json_out is not None:
        write_text(json_out, json.dumps(report, indent=1) + "\n")  # NaN R^2 stays readable as in metrics.json
        console.print(f"wrote {json_out}")
