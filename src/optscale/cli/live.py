"""``optscale run`` and ``optscale pool``: live sampling against OpenAI-compatible servers.

Both build a :class:`~optscale.live.config.RunConfig` from an optional TOML/YAML file and the
flags (flags win), run it in a resumable run folder and show a progress bar. ``run`` lets a
policy decide how many samples each problem gets; ``pool`` draws the full budget for every
problem, producing a pool that offline replay can evaluate every policy on.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import InputError, OptscaleError
from ..policies import parse_settings

if TYPE_CHECKING:
    from ..live.config import RunConfig
    from ..live.runner import RunOutcome
    from ..live.sampler import ProblemResult

console = Console(stderr=True)

SCORER_SETTINGS_HELP = (
    "judge: base_url, model, prompt, concurrency; prm: base_url, model, aggregate, separator, step_tag, system, "
    "markup, path, max_steps; prm-local: model, aggregate, separator, step_tag, system, device, batch_size, dtype, "
    "max_steps; confidence: none"
)
"""Kept in step with :func:`optscale.live.config.scorer_settings_help` by a test; written out so
that ``optscale --help`` works without the ``live`` extra."""


def _live_extra() -> None:
    """The live commands need httpx (the ``live`` extra); say so instead of failing on import."""
    if importlib.util.find_spec("httpx") is None:
        raise InputError("live sampling needs the live extra: pip install 'optscale[live]'", "optscale run")


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``pool`` to the root app."""
    app.command("run")(run)
    app.command("pool")(pool)


# -- shared options ---------------------------------------------------------------------------
_Dataset = Annotated[str | None, typer.Argument(
    help="Problems: a .jsonl/.json/.csv file with question and answer fields, or a Hugging Face dataset name.",
    show_default=False)]
_Config = Annotated[Path | None, typer.Option("--config", help="TOML or YAML file with any of these settings "
                                              "(underscored names); flags override it.")]
_BaseUrl = Annotated[list[str] | None, typer.Option("--base-url", help="OpenAI-compatible server, e.g. "
                                                    "http://127.0.0.1:8000/v1; repeat for several replicas.")]
_Model = Annotated[str | None, typer.Option("--model", help="Model name as the server serves it.")]
_ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", show_envvar=True,
                                             help="Bearer token, if the server wants one (never stored).")]
_Endpoint = Annotated[str | None, typer.Option("--endpoint", help="chat (default) or completion.")]
_Scorer = Annotated[str | None, typer.Option("--scorer", help="prm (vLLM pooling API), prm-local "
                                             "(transformers), judge (LLM-as-judge) or confidence (own logprobs).")]
_ScorerSet = Annotated[list[str] | None, typer.Option("--scorer-set", help="Scorer setting key=value, "
                                                      f"repeatable. {SCORER_SETTINGS_HELP}.")]
_Out = Annotated[Path | None, typer.Option("--out", "-o", help="Run folder; an existing one is resumed.")]
_System = Annotated[str | None, typer.Option("--system", help="System prompt (or @FILE).")]
_Template = Annotated[str | None, typer.Option("--template", help="User message with {question} (or @FILE); "
                                               "default asks for the answer in \\boxed{}.")]
_Markup = Annotated[str | None, typer.Option("--chat-markup", help="Chat markup for --endpoint completion: "
                                             "chatml, llama3 or plain.")]
_Temperature = Annotated[float | None, typer.Option("--temperature", help="Sampling temperature [0.7].")]
_TopP = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling [1.0].")]
_MaxTokens = Annotated[int | None, typer.Option("--max-tokens", help="Most tokens per response [1024].")]
_Stop = Annotated[list[str] | None, typer.Option("--stop", help="Stop sequence, repeatable.")]
_Stream = Annotated[bool | None, typer.Option("--stream/--no-stream", help="Stream responses (needed to count "
                                              "the tokens of cancelled requests) [stream].")]
_Seed = Annotated[int | None, typer.Option("--seed", help="Run seed; each sample gets its own seed derived from "
                                         "it, so a re-drawn sample repeats (where the server honours seeds).")]
_Concurrency = Annotated[int | None, typer.Option("--concurrency", help="Generation requests under way at "
                                                  "once, all problems together [8].")]
_InFlight = Annotated[int | None, typer.Option("--in-flight", help="Samples under way per problem [4].")]
_ProblemsInFlight = Annotated[int | None, typer.Option("--problems-in-flight",
                                                       help="Problems worked on at once [= --concurrency].")]
_NPerRequest = Annotated[int | None, typer.Option("--n-per-request", help="Samples asked per request with the "
                                                  "OpenAI n parameter [1].")]
_MaxFailures = Annotated[int | None, typer.Option("--max-failures", help="Failed requests (after retries) before "
                                                  "a problem is left for the next run [3].")]
_Timeout = Annotated[float | None, typer.Option("--timeout", help="Seconds one request may take [600].")]
_IdleTimeout = Annotated[float | None, typer.Option("--idle-timeout", help="Seconds a stream may stay silent "
                                                    "[60].")]
_Retries = Annotated[int | None, typer.Option("--retries", help="Retries per request on 429/5xx/connection "
                                              "errors [5].")]
_Limit = Annotated[int | None, typer.Option("--limit", help="Use at most this many problems.")]
_Offset = Annotated[int | None, typer.Option("--offset", help="Skip this many problems first [0].")]
_Split = Annotated[str | None, typer.Option("--split", help="Hugging Face split [test].")]
_Subset = Annotated[str | None, typer.Option("--subset", help="Hugging Face configuration, e.g. main.")]
_QField = Annotated[str | None, typer.Option("--question-field", help="Question field [question].")]
_AField = Annotated[str | None, typer.Option("--answer-field", help="Gold answer field [answer].")]
_IdField = Annotated[str | None, typer.Option("--id-field", help="Id field [id].")]
_Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


def _text_or_file(value: str | None, flag: str) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    if not path.is_file():
        raise InputError("file not found", f"{flag} {path}")
    return path.read_text(encoding="utf-8")


def _config(flags: dict[str, Any], config_file: Path | None, policy_pairs: list[str] | None,
            scorer_pairs: list[str] | None) -> RunConfig:
    _live_extra()
    from ..live.config import build_config, load_config_file

    file_values = load_config_file(config_file) if config_file else {}
    flags["out"] = str(flags["out"]) if flags.get("out") is not None else None
    flags["system"] = _text_or_file(flags.get("system"), "--system")
    flags["template"] = _text_or_file(flags.get("template"), "--template")
    flags["policy_settings"] = parse_settings(policy_pairs)
    try:
        flags["scorer_settings"] = parse_settings(scorer_pairs)
    except InputError as exc:
        raise InputError(exc.detail, "--scorer-set") from None
    return build_config(file_values, flags)


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
    cancelled = sum(r.summary.get("cancelled_tokens", 0) for r in finished)
    flagged = sum(r.summary.get("n_flagged", 0) for r in finished)
    failed = sum(r.summary.get("n_failed", 0) for r in finished)
    table = Table(title=f"run {out}" + (" (resumed)" if outcome.resumed else ""), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("problems finished", f"{len(finished)} / {len(outcome.results)}")
    if graded:
        table.add_row("accuracy", f"{100 * sum(bool(r.correct) for r in graded) / len(graded):.1f}%")
    if finished:
        table.add_row("samples per problem", f"{samples / len(finished):.2f} (budget {n_max})")
        table.add_row("samples saved vs budget", f"{100 * (1 - samples / (n_max * len(finished))):.1f}%")
        table.add_row("tokens (all requests)", f"{tokens:,} ({tokens / len(finished):,.0f} per problem)")
        table.add_row("tokens of cancelled requests", f"{cancelled:,}")
        table.add_row("flagged samples / failed requests", f"{flagged} / {failed}")
    table.add_row("wall time", f"{outcome.wall_s:.1f} s")
    return table


def _execute(config: RunConfig, show_progress: bool, report: bool) -> None:
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
                          "resume", highlight=False)
            raise typer.Exit(130) from None
    console.print(_summary(outcome, config.n_max, out))
    if outcome.pool:
        console.print(f"pool: {outcome.pool}", highlight=False)
    if report:
        _report(out, config.n_max)
    if outcome.unfinished:
        first = outcome.unfinished[0].error
        raise OptscaleError(f"{len(outcome.unfinished)} problem(s) did not finish ({first}); run the same "
                            "command again to resume them")


def _report(out: Path, n_max: int) -> None:
    """The offline tools' report of the run folder, when this installation has them."""
    try:
        from ..report import write_run_report
    except ImportError:
        console.print("report skipped: optscale.report is not available in this installation", highlight=False)
        return
    try:
        written = write_run_report(out, n_max=n_max)
    except OptscaleError as exc:
        console.print(f"[yellow]report skipped:[/] {exc}", highlight=False)
        return
    console.print(f"report: {', '.join(str(p) for p in written)}", highlight=False)


def run(
    dataset: _Dataset = None,
    config_file: _Config = None,
    base_url: _BaseUrl = None,
    model: _Model = None,
    scorer: _Scorer = None,
    scorer_set: _ScorerSet = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Policy: optscale (default), optscale0, "
                                               "optscale-t, bon, sc, esc, asc.")] = None,
    n_max: Annotated[int | None, typer.Option("--n-max", help="Most samples per problem [16].")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="Policy setting key=value, repeatable "
                                                       "(e.g. alpha=0.9, s_min=0.95, peek=3).")] = None,
    out: _Out = None,
    api_key: _ApiKey = None,
    endpoint: _Endpoint = None,
    system: _System = None,
    template: _Template = None,
    chat_markup: _Markup = None,
    temperature: _Temperature = None,
    top_p: _TopP = None,
    max_tokens: _MaxTokens = None,
    stop: _Stop = None,
    stream: _Stream = None,
    seed: _Seed = None,
    concurrency: _Concurrency = None,
    in_flight: _InFlight = None,
    problems_in_flight: _ProblemsInFlight = None,
    n_per_request: _NPerRequest = None,
    max_failures: _MaxFailures = None,
    timeout: _Timeout = None,
    idle_timeout: _IdleTimeout = None,
    retries: _Retries = None,
    limit: _Limit = None,
    offset: _Offset = None,
    split: _Split = None,
    subset: _Subset = None,
    question_field: _QField = None,
    answer_field: _AField = None,
    id_field: _IdField = None,
    show_progress: _Progress = True,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report and plots at the "
                                         "end.")] = True,
) -> None:
    """Answer every problem with as few samples as the policy needs, live against a server."""
    flags = dict(locals())
    for key in ("config_file", "settings", "scorer_set", "show_progress", "report"):
        flags.pop(key)
    config = _config(flags, config_file, settings, scorer_set)
    _execute(config, show_progress, report)


def pool(
    dataset: _Dataset = None,
    config_file: _Config = None,
    base_url: _BaseUrl = None,
    model: _Model = None,
    scorer: _Scorer = None,
    scorer_set: _ScorerSet = None,
    n: Annotated[int | None, typer.Option("--n", "--n-max", help="Samples per problem [16].")] = None,
    out: _Out = None,
    api_key: _ApiKey = None,
    endpoint: _Endpoint = None,
    system: _System = None,
    template: _Template = None,
    chat_markup: _Markup = None,
    temperature: _Temperature = None,
    top_p: _TopP = None,
    max_tokens: _MaxTokens = None,
    stop: _Stop = None,
    stream: _Stream = None,
    seed: _Seed = None,
    concurrency: _Concurrency = None,
    in_flight: _InFlight = None,
    problems_in_flight: _ProblemsInFlight = None,
    n_per_request: _NPerRequest = None,
    max_failures: _MaxFailures = None,
    timeout: _Timeout = None,
    idle_timeout: _IdleTimeout = None,
    retries: _Retries = None,
    limit: _Limit = None,
    offset: _Offset = None,
    split: _Split = None,
    subset: _Subset = None,
    question_field: _QField = None,
    answer_field: _AField = None,
    id_field: _IdField = None,
    show_progress: _Progress = True,
) -> None:
    """Draw and score the full budget for every problem: a pool (OUT/pool.jsonl) for offline replay."""
    flags = dict(locals())
    for key in ("config_file", "scorer_set", "show_progress", "n"):
        flags.pop(key)
    flags.update(policy="bon", n_max=n)
    config = _config(flags, config_file, None, scorer_set)
    if config.policy != "bon" or config.policy_settings:
        raise InputError("a pool draws the full budget; remove policy settings from the config file", "--config")
    _execute(config, show_progress, report=False)
