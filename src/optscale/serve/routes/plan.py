"""``/v1/optscale/plan``: what a policy decides on given scores, without sampling anything."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from ...checks import is_number
from ...fit import FitFlag, fit_mle
from ...policies import Decision, Problem, Sample
from ..episodes import estimates
from ..errors import ApiError
from ..options import HEADER_POLICY, HEADER_SETTINGS, resolve_options
from ..responses import json_safe
from ..state import Ctx

__all__ = ["router", "MAX_PLAN_SCORES"]

MAX_PLAN_SCORES = 100_000
router = APIRouter()


@router.post("/v1/optscale/plan")
async def plan(request: Request, ctx: Ctx):
    ctx.caller(request)
    _, body = await ctx.bodies.read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", None, "invalid_request")
    scores, answers, question = body.pop("scores", None), body.pop("answers", None), body.pop("question", "")
    if not isinstance(question, str):
        raise ApiError(400, "question: a string (the problem, for policies whose prior reads it)", "question",
                       "invalid_request")
    if not isinstance(scores, list) or not scores or len(scores) > MAX_PLAN_SCORES:
        raise ApiError(400, f"give scores: a list of 1 to {MAX_PLAN_SCORES} numbers in [0, 1]", "scores",
                       "invalid_request")
    for i, s in enumerate(scores):
        if not is_number(s, 0.0, 1.0):
            raise ApiError(400, f"must be a number in [0, 1], got {json.dumps(s)[:50]}", f"scores[{i}]",
                           "invalid_request")
    if answers is not None and (not isinstance(answers, list) or len(answers) != len(scores)
                                or not all(a is None or isinstance(a, str) for a in answers)):
        raise ApiError(400, "answers: a list of strings (or null), one per score", "answers", "invalid_request")
    options = resolve_options(ctx.config, ctx.config.model, body, request.headers.get(HEADER_POLICY),
                              request.headers.get(HEADER_SETTINGS), body_place="",
                              unused=("deadline_s", "max_total_tokens", "return_samples"), tables=ctx.tables)
    episode = await ctx.service.start(options, Problem(id="plan", question=question), "question")
    decision, used = Decision.CONTINUE, 0
    for i, score in enumerate(scores):
        used += 1
        decision = episode.observe(Sample(float(score), answers[i] if answers else None))
        if decision is Decision.STOP:
            break
    outcome = episode.result()
    fit = fit_mle([scores[:used]])
    est = estimates(outcome)
    return json_safe({  # a degenerate fit's NaN goes out as null, never as invalid JSON or a 500
        "policy": options.name, "settings": options.settings, "decision": decision.value, "n_observed": used,
        "n_given": len(scores), "planned": episode.planned, "stop_reason": outcome.stop_reason,
        "chosen_index": outcome.chosen, "n_star": est.get("n_star"), "estimates": est,
        "fit": {"mu": float(fit.mu[0]), "sigma": float(fit.sigma[0]), "converged": bool(fit.converged[0]),
                "flags": FitFlag.describe(int(fit.flag[0]))}})
