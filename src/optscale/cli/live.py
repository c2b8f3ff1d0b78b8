"""``optscale run`` and ``optscale pool``: live sampling against OpenAI-compatible servers.

Both build a :class:`~optscale.live.config.RunConfig` from an optional TOML/YAML file and the
flags (flags win), run it in a resumable run folder and show a progress bar. ``run`` lets a
policy decide how many samples each problem gets; ``pool`` draws the full budget for every
problem, producing a pool that offline replay can evaluate every policy on.

The flags' help is generated from the settings models (descriptions and defaults), the
scorer kinds and their settings from :data:`~optscale.live.scorers.SCORERS`, the policies
from :data:`~optscale.policies.POLICIES`. The library names every bad value by its own
name; :data:`RUN_FLAGS` and :data:`POOL_FLAGS` translate those names to the flags.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import InputError, OptscaleError

if importlib.util.find_spec("httpx") is None:  # say so instead of failing on the import below
    raise InputError("live sampling needs the live extra: pip install 'optscale[live]'", "optscale run")

from ..io import read_text  # noqa: E402 - after the check of the live extra
from ..live.config import FLAT, RunConfig, build_config, load_config_file, setting_places  # noqa: E402
from ..live.scorers import SCORERS  # noqa: E402
from ..live.secrets import Redactor  # noqa: E402
from ..policies import POLICIES, parse_settings, settings_help  # noqa: E402
from .flags import flags  # noqa: E402

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from ..live.runner import RunOutcome
    from ..live.sampler import ProblemResult

console = Console(stderr=True)

_OWN = ("out", "base_url", "model", "endpoint", "system", "template", "chat_markup", "scorer", "policy", "n_max",
        "engine", "ray_address", "actors", "actor_gpus")
RUN_FLAGS: dict[str, str] = {
    **{name: "--" + name.replace("_", "-") for name in (*FLAT, *_OWN)},
    "dataset": "DATASET",
    "config": "--config",
    "policy_settings": "--set", "policy_settings.": "--set ", "settings": "--set", "settings.": "--set ",
    "scorer_settings": "--scorer-set", "scorer_settings.": "--scorer-set ", "scorer.": "--scorer-set ",
}
"""Library names (settings, config keys) -> the flags of ``optscale run``."""
POOL_FLAGS: dict[str, str] = {**RUN_FLAGS, "n_max": "--n"}
"""Library names -> the flags of ``optscale pool``."""


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``pool`` to the root app."""
    app.command("run")(run)
    app.command("pool")(pool)


# -- help generated from the models ----------------------------------------------------------
def _field(name: str) -> FieldInfo:
    if name in FLAT:
        section, key = FLAT[name]
        return RunConfig.model_fields[section].annotation.model_fields[key]
    return RunConfig.model_fields[name]


def _shown(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return name.replace("_", "-") if value else "no-" + name.replace("_", "-")
    return str(value)


def _help(name: str, after: str = "", default: bool = True) -> str:
    """A flag's help: the model's description and default, escaped so rich shows brackets as typed."""
    field = _field(name)
    text = field.description or ""
    text = text[:1].upper() + text[1:] + after + "."
    value = field.get_default(call_default_factory=True)
    if default and value not in (None, (), [], {}) and not field.is_required():
        text += f" [default: {_shown(name, value)}]"
    return escape(text)


def _option(name: str, *names: str, after: str = "", default: bool = True, **kwargs: Any) -> Any:
    return typer.Option(*(names or ("--" + name.replace("_", "-"),)), help=_help(name, after, default),
                        show_default=False, **kwargs)


def _scorer_help() -> str:
    kinds = "; ".join(f"{name}: {spec.help}" for name, spec in SCORERS.items())
    return escape(f"How responses are scored: {kinds}.")


def _scorer_set_help() -> str:
    keys = "; ".join(f"{name}: {', '.join(spec.settings.model_fields) if spec.settings else 'none'}"
                     for name, spec in SCORERS.items())
    envs = ", ".join(f"{spec.api_key_env} ({name})" for name, spec in SCORERS.items() if spec.api_key_env)
    return escape(f"Scorer setting key=value, repeatable. {keys}. A scorer's server gets only its own api_key "
                  f"(or {envs}), never --api-key; keys are never stored.")


#: The flags ``run`` and ``pool`` share, defined once: name -> (annotation, default). :func:`_with_shared`
#: puts the first table before a command's own flags and the second after them (the order of --help).
_SOURCE_FLAGS: dict[str, tuple[Any, Any]] = {
    "dataset": (Annotated[str | None, typer.Argument(help=_help("dataset"), show_default=False)], None),
    "config_file": (Annotated[Path | None, typer.Option("--config", help="TOML, YAML or JSON file with any of these "
                                                        "settings (underscored names); flags override it.")], None),
    "base_url": (Annotated[list[str] | None, _option("base_url", after=" (repeat the flag)")], None),
    "model": (Annotated[str | None, _option("model")], None),
    "scorer": (Annotated[str | None, typer.Option("--scorer", help=_scorer_help(), show_default=False)], None),
    "scorer_set": (Annotated[list[str] | None, typer.Option("--scorer-set", help=_scorer_set_help(),
                                                            show_default=False)], None),
}
_SAMPLING_FLAGS: dict[str, tuple[Any, Any]] = {
    "out": (Annotated[Path | None, _option("out", "--out", "-o")], None),
    "api_key": (Annotated[str | None, _option("api_key", envvar="OPENAI_API_KEY", show_envvar=True,
                                              after=", the generator's (never stored)")], None),
    "endpoint": (Annotated[str | None, _option("endpoint")], None),
    "system": (Annotated[str | None, _option("system", after=" (or @FILE)")], None),
    "template": (Annotated[str | None, _option("template", after=" (or @FILE)", default=False)], None),
    "chat_markup": (Annotated[str | None, _option("chat_markup")], None),
    "temperature": (Annotated[float | None, _option("temperature")], None),
    "top_p": (Annotated[float | None, _option("top_p")], None),
    "max_tokens": (Annotated[int | None, _option("max_tokens")], None),
    "stop": (Annotated[list[str] | None, _option("stop", after="; repeatable")], None),
    "stream": (Annotated[bool | None, _option("stream", "--stream/--no-stream")], None),
    "seed": (Annotated[int | None, _option("seed", after=", so a re-drawn sample repeats where the server honours "
                                                         "seeds")], None),
    **{name: (Annotated[int | None, _option(name)], None)
       for name in ("concurrency", "in_flight", "problems_in_flight", "n_per_request", "max_failures")},
    "timeout": (Annotated[float | None, _option("timeout")], None),
    "idle_timeout": (Annotated[float | None, _option("idle_timeout")], None),
    "retries": (Annotated[int | None, _option("retries", after=" (429, 5xx, dropped connections)")], None),
    "limit": (Annotated[int | None, _option("limit")], None),
    "offset": (Annotated[int | None, _option("offset")], None),
    **{name: (Annotated[str | None, _option(name)], None)
       for name in ("split", "subset", "question_field", "answer_field", "id_field")},
    "engine": (Annotated[str | None, _option("engine")], None),
    "ray_address": (Annotated[str | None, _option("ray_address")], None),
    "actors": (Annotated[int | None, _option("actors")], None),
    "actor_gpus": (Annotated[float | None, _option("actor_gpus")], None),
    "show_progress": (Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")], True),
}
#: Shared flags that are not settings of the run (the rest go to :func:`build_config` as they are).
_NOT_SETTINGS = ("config_file", "scorer_set", "show_progress")


def _with_shared(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with the shared flags added to its signature, which typer reads (and --help shows).

    ``command`` declares its own flags (positional-or-keyword ones go after :data:`_SOURCE_FLAGS`,
    keyword-only ones after :data:`_SAMPLING_FLAGS`) and receives the shared ones in ``**shared``.
    """
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]

    def shared(table: dict[str, tuple[Any, Any]]) -> list[inspect.Parameter]:
        return [inspect.Parameter(name, keyword, annotation=kind, default=default)
                for name, (kind, default) in table.items()]

    params = (shared(_SOURCE_FLAGS) + [p.replace(kind=keyword) for p in own if p.kind != keyword]
              + shared(_SAMPLING_FLAGS) + [p for p in own if p.kind == keyword])

    @functools.wraps(command)
    def with_shared(**values: Any) -> None:
        command(**values)

    with_shared.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return with_shared


def _split(shared: dict[str, Any]) -> tuple[dict[str, Any], Path | None, list[str] | None, bool]:
    """The shared flags' run settings, and the config file, scorer settings and progress flag apart."""
    values = dict(shared)
    config_file, scorer_set, show_progress = (values.pop(key) for key in _NOT_SETTINGS)
    return values, config_file, scorer_set, show_progress


_SET_HELP = escape(f"Policy setting key=value, repeatable (e.g. s_min=0.95, alpha=0.9). {settings_help()}.")
_N_HELP = escape(f"Samples drawn for every problem. [default: {_field('n_max').default}]")


def _text_or_file(value: str | None, flag: str) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    try:
        return read_text(value[1:])
    except InputError as exc:
        raise InputError(exc.detail, f"{flag} {exc.where}") from None


def _values(values: dict[str, Any], config_file: Path | None, policy_pairs: list[str] | None,
            scorer_pairs: list[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config file's values and the flags' values (flags not given are None)."""
    file_values = load_config_file(config_file) if config_file else {}
    values["out"] = str(values["out"]) if values.get("out") is not None else None
    values["system"] = _text_or_file(values.get("system"), "--system")
    values["template"] = _text_or_file(values.get("template"), "--template")
    values["policy_settings"] = parse_settings(policy_pairs)
    try:
        values["scorer_settings"] = parse_settings(scorer_pairs)
    except InputError as exc:
        raise InputError(exc.detail, "--scorer-set") from None
    return file_values, values


def _names(names: dict[str, str], file_values: dict[str, Any], flag_values: dict[str, Any],
           config_file: Path | None) -> dict[str, str]:
    """``names`` where a setting the config file gave (and no flag overrode) is named by file and key."""
    given = {k: v for k, v in flag_values.items() if v is not None and v != [] and v != {}}
    from_file = setting_places(file_values) - setting_places(given)
    if config_file is None:
        return names
    return names | {"config": str(config_file)} | {place: f"{config_file} key {place}" for place in from_file} \
        | {place + ".": f"{config_file} key {place}." for place in from_file}


class _ProgressListener:
    """Problems done, samples used, tokens, running accuracy and the budget share saved.

    Finished problems count with their logged totals (including earlier sessions'); problems
    under way with what this session has logged for them so far.
    """

    def __init__(self, progress: Progress, task, n_max: int):
        self.progress, self.task, self.n_max = progress, task, n_max
        self.done = self.samples = self.tokens = self.graded = self.right = 0
        self.under_way: dict[str, list[int]] = {}

    def on_start(self, problems: int) -> None:
        self.progress.update(self.task, total=problems, stats="")

    def on_record(self, record: dict[str, Any]) -> None:
        counts = self.under_way.setdefault(record["problem"], [0, 0])
        counts[0] += record["type"] == "sample"
        counts[1] += int(record["tokens"]) + int(record.get("wasted_tokens") or 0)
        self._show(advance=0)

    def on_problem(self, result: ProblemResult) -> None:
        self.under_way.pop(result.id, None)
        if result.error:
            return
        self.done += 1
        self.samples += result.n_samples
        self.tokens += result.tokens
        if result.correct is not None:
            self.graded += 1
            self.right += bool(result.correct)
        self._show(advance=1)

    def _show(self, advance: int) -> None:
        samples = self.samples + sum(c[0] for c in self.under_way.values())
        tokens = self.tokens + sum(c[1] for c in self.under_way.values())
        acc = f"{100 * self.right / self.graded:.1f}%" if self.graded else "-"
        saved = f"{100 * (1 - self.samples / (self.done * self.n_max)):.0f}%" if self.done else "-"
        stats = f"samples {samples}  tokens {tokens:,}  acc {acc}  saved {saved}"
        self.progress.update(self.task, advance=advance, stats=stats)


def _summary(outcome: RunOutcome, n_max: int, out: Path) -> Table:
    finished = [r for r in outcome.results if not r.error]
    graded = [r for r in finished if r.correct is not None]
    samples = sum(r.n_samples for r in finished)
    tokens = sum(r.tokens for r in finished)
    prompt = [r.summary.get("prompt_tokens") for r in finished]
    cancelled = sum(r.summary.get("cancelled_tokens", 0) for r in finished)
    uncounted = sum(r.summary.get("tokens_unknown", 0) for r in finished)
    invalid = sum(r.summary.get("n_usage_invalid", 0) for r in finished)
    flagged = sum(r.summary.get("n_flagged", 0) for r in finished)
    failed = sum(r.summary.get("n_failed", 0) for r in finished)
    table = Table(title=escape(f"run {out}" + (" (resumed)" if outcome.resumed else "")), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("problems finished", f"{len(finished)} / {len(outcome.results)}")
    if graded:
        table.add_row("accuracy", f"{100 * sum(bool(r.correct) for r in graded) / len(graded):.1f}%")
    if finished:
        table.add_row("samples per problem", f"{samples / len(finished):.2f} (budget {n_max})")
        table.add_row("samples saved vs budget", f"{100 * (1 - samples / (n_max * len(finished))):.1f}%")
        if uncounted:
            table.add_row("tokens (all requests)", f"unknown ({uncounted} responses uncounted)")
        else:
            table.add_row("tokens (all requests)", f"{tokens:,} ({tokens / len(finished):,.0f} per problem)")
        known = all(isinstance(p, int) for p in prompt)
        table.add_row("prompt tokens", f"{sum(prompt):,}" if known else "unknown (not reported by the server)")
        table.add_row("tokens of cancelled requests", f"{cancelled:,}")
        table.add_row("flagged samples / failed requests", f"{flagged} / {failed}")
        ungraded = [sum(r.summary.get("grade_status") == s for r in finished) for s in ("timeout", "error")]
        if any(ungraded):
            table.add_row("answers whose grading timed out / failed (counted wrong)", "{} / {}".format(*ungraded))
        if invalid:
            table.add_row("invalid usage reports (counted tokens used)", f"{invalid}")
    table.add_row("wall time", f"{outcome.wall_s:.1f} s")
    return table


def _execute(config: RunConfig, show_progress: bool, report: bool) -> None:
    """Run ``config``; every error printed has its keys and URL credentials masked."""
    redact = Redactor(config.secrets())
    try:
        _run(config, show_progress, report)
    except InputError as exc:
        raise InputError(redact(exc.detail), redact(exc.where) if exc.where else None) from None
    except OptscaleError as exc:
        raise OptscaleError(redact(str(exc))) from None


def _run(config: RunConfig, show_progress: bool, report: bool) -> None:
    from ..live.runner import run_live

    out = Path(config.out)
    progress = Progress(SpinnerColumn(), TextColumn("[bold]problems"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console,
                        disable=not show_progress, transient=True)
    with progress:
        task = progress.add_task("run", total=None, stats="checking servers")
        listener = _ProgressListener(progress, task, config.n_max)
        try:
            outcome = asyncio.run(run_live(config, listener))
        except KeyboardInterrupt:
            progress.stop()
            console.print(f"interrupted; everything logged so far is kept in {out} - run the same command to "
                          "resume", highlight=False, markup=False)
            raise typer.Exit(130) from None
    console.print(_summary(outcome, config.n_max, out))
    if outcome.pool:
        console.print(f"pool: {outcome.pool}", highlight=False, markup=False)
    if report:
        _report(out)
    if outcome.unfinished:
        first = outcome.unfinished[0].error
        raise OptscaleError(f"{len(outcome.unfinished)} problem(s) did not finish ({first}); run the same "
                            "command again to resume them")


def _report(out: Path) -> None:
    """The report of the run folder (its budget read from the folder, as the store wrote it)."""
    from ..report import write_run_report

    try:
        written = write_run_report(out)
    except OptscaleError as exc:
        console.print(f"[yellow]report skipped:[/] {escape(str(exc))}", highlight=False)
        return
    console.print(f"report: {', '.join(str(p) for p in written)}", highlight=False, markup=False)


@_with_shared
def run(
    policy: Annotated[str | None, _option("policy", after=": " + ", ".join(POLICIES))] = None,
    n_max: Annotated[int | None, _option("n_max")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP, show_default=False)] = None,
    *,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report and plots at the "
                                         "end.")] = True,
    **shared: Any,
) -> None:
    """Answer every problem with as few samples as the policy needs, live against a server."""
    values, config_file, scorer_set, show_progress = _split(shared)
    values.update(policy=policy, n_max=n_max)
    with flags(RUN_FLAGS):
        file_values, flag_values = _values(values, config_file, settings, scorer_set)
    with flags(_names(RUN_FLAGS, file_values, flag_values, config_file)):
        config = build_config(file_values, flag_values)
        _execute(config, show_progress, report)


@_with_shared
def pool(
    n: Annotated[int | None, typer.Option("--n", "--n-max", help=_N_HELP, show_default=False)] = None,
    **shared: Any,
) -> None:
    """Draw and score the full budget for every problem: a pool (OUT/pool.jsonl) for offline replay."""
    values, config_file, scorer_set, show_progress = _split(shared)
    values.update(policy="bon", n_max=n)
    with flags(POOL_FLAGS):
        file_values, flag_values = _values(values, config_file, None, scorer_set)
    with flags(_names(POOL_FLAGS, file_values, flag_values, config_file)):
        config = build_config(file_values, flag_values)
        if config.policy != "bon" or config.policy_settings:
            raise InputError("a pool draws the full budget; remove policy settings from the config file", "--config")
        _execute(config, show_progress, report=False)
