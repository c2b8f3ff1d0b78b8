"""Matplotlib figures: accuracy vs tokens against the BoN curve, N* over (mu, sigma), and the
calibration of a prior predictor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..io import atomic_open

if TYPE_CHECKING:
    from ..predictor.base import Prediction

__all__ = ["frontier_plot", "pareto_plot", "nstar_plot", "calibration_plot", "pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 130, layout: bool = True) -> Path:
    """Lay out (unless ``layout`` is False: the caller did), write atomically (creating the folder;
    format from the suffix) and close a figure."""
    path = Path(path)
    try:
        if layout:
            fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        pyplot().close(fig)
    return path


def pareto_plot(
    curve_rows: Sequence[Mapping],
    policy_rows: Sequence[Mapping],
    path: str | Path,
    title: str = "",
    grid_rows: Sequence[Mapping] = (),
    envelope_rows: Sequence[Mapping] = (),
) -> Path:
    """Accuracy vs mean tokens: the fixed-N BoN curve, each policy with its 95% interval, optionally
    the envelope of every fixed-N method (its vertices, flat beyond the last) and every grid point
    of a sweep with the Pareto front of all of them."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    _draw_pareto(ax, curve_rows, policy_rows, grid_rows, envelope_rows)
    ax.set_title(title or "Accuracy vs cost")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def _draw_pareto(ax, curve_rows, policy_rows, grid_rows=(), envelope_rows=(),
                 styles: Mapping[str, tuple[str, str]] | None = None, intervals: str | None = "accuracy") -> None:
    """The curves and points of :func:`pareto_plot` on one axis; ``styles`` (policy name -> marker,
    colour) keep a policy's look across panels. Each point's bar is its accuracy's 95% interval,
    or with ``intervals="gain"`` the paired 95% interval of its gain over the envelope placed around
    it (the bar clears the envelope exactly where the gain's interval is above 0), or none."""
    tok = np.array([r["mean_tokens"] for r in curve_rows])
    acc = np.array([r["accuracy"] for r in curve_rows])
    ax.plot(tok, 100 * acc, "k.-", lw=1.2, label="fixed-N Best-of-N")
    for r in curve_rows:
        if r["n"] in (1, 2, 4, 8, 16, 32, 64):
            ax.annotate(f"N={r['n']}", (r["mean_tokens"], 100 * r["accuracy"]), textcoords="offset points",
                        xytext=(2, -10), fontsize=7, color="0.35")
    if envelope_rows:
        e_tok = [r["mean_tokens"] for r in envelope_rows] + [max(tok.max(), envelope_rows[-1]["mean_tokens"])]
        e_acc = [100 * r["accuracy"] for r in envelope_rows] + [100 * envelope_rows[-1]["accuracy"]]
        ax.plot(e_tok, e_acc, "-", color="tab:green", lw=1.5, label="envelope of fixed-N methods", zorder=2)
        for r in envelope_rows:
            ax.annotate(r["method"], (r["mean_tokens"], 100 * r["accuracy"]), textcoords="offset points",
                        xytext=(2, 4), fontsize=6, color="tab:green", zorder=1)  # under the policies' points
    if grid_rows:
        g_tok = np.array([r["mean_tokens"] for r in grid_rows])
        g_acc = np.array([r["accuracy"] for r in grid_rows])
        ax.scatter(g_tok, 100 * g_acc, s=10, c="0.7", label="sweep grid", zorder=1)
        from ..replay.sweep import pareto_mask

        front = pareto_mask(g_tok, g_acc)
        if front.any():
            order = np.argsort(g_tok[front])
            ax.plot(g_tok[front][order], 100 * g_acc[front][order], "--", color="tab:red", lw=1, label="grid Pareto front")
    for i, r in enumerate(policy_rows):
        err = _error_bar(r, intervals)
        marker, colour = (styles or {}).get(r["policy"]) or (_MARKERS[i % len(_MARKERS)], None)
        ax.errorbar(r["mean_tokens"], 100 * r["accuracy"], yerr=err, fmt=marker, ms=11 if marker == "*" else 6,
                    color=colour, capsize=2, label=r["label"], zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("mean tokens per problem (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, which="both", ls=":", alpha=0.5)


def _error_bar(row: Mapping, kind: str | None):
    """``yerr`` (points below, above) of one policy's row: see :func:`_draw_pareto`."""
    if kind == "accuracy":
        return [[100 * (row["accuracy"] - row["ci_low"])], [100 * (row["ci_high"] - row["accuracy"])]]
    gain = row.get("gain_vs_envelope")
    if kind != "gain" or gain is None or gain != gain:
        return None
    return [[100 * (gain - row["gain_vs_envelope_ci_low"])], [100 * (row["gain_vs_envelope_ci_high"] - gain)]]


_MARKERS = "osD^v<>ph*X"  # 11 markers against 10 colours: no two of 110 policies look alike


#: Policy colours of :func:`frontier_plot`: tab10 without green (the envelope's) and grey (the grid's).
_COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def frontier_plot(panels: Sequence[Mapping], path: str | Path, title: str = "", highlight: Sequence[str] = (),
                  intervals: str | None = "gain") -> Path:
    """Accuracy vs mean tokens at several budgets side by side, one legend for all: each panel
    (``title``, ``curve``, ``envelope``, ``policies`` rows, as :func:`pareto_plot` takes them)
    shows the fixed-N Best-of-N curve, the envelope of every fixed-N method and the policies, with
    the paired 95% interval of their gain over the envelope around each point (``intervals``:
    "gain", "accuracy" or None, for many policies whose bars would cover each other).
    A policy keeps its marker and colour (and its name in the legend) in every panel; those in
    ``highlight`` are drawn as large stars."""
    from matplotlib.ticker import NullFormatter

    plt = pyplot()
    names = list(dict.fromkeys([*(n for n in highlight), *(r["policy"] for p in panels for r in p["policies"])]))
    others = [n for n in names if n not in highlight]
    colours = _COLOURS[len(highlight):] or _COLOURS  # the highlighted take the first colours
    markers = _MARKERS.replace("*", "")  # the star is the highlighted policies'
    styles = {n: (markers[i % len(markers)], colours[i % len(colours)]) for i, n in enumerate(others)}
    styles |= {n: ("*", _COLOURS[i % len(_COLOURS)]) for i, n in enumerate(highlight)}
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    legend = 0.25 * -(-(len(names) + 2) // 4) + 0.2  # inches: 4 entries a row, the curves' two included
    height = 4.2 * rows + 0.5 + legend
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, height), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _draw_pareto(ax, panel["curve"], [{**r, "label": r["policy"]} for r in panel["policies"]],
                     envelope_rows=panel["envelope"], styles=styles, intervals=intervals)
        ax.xaxis.set_minor_formatter(NullFormatter())  # the log axis' minor labels collide
        ax.margins(y=0.08)  # room for the curve's N labels
        ax.set_title(panel["title"], fontsize=10)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles: dict = {}  # one entry per label, over all panels
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(title or "Accuracy vs cost", fontsize=11)
    fig.tight_layout(rect=(0, legend / height, 1, 1))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=8, frameon=False)
    return save_figure(fig, path, layout=False)


def nstar_plot(path: str | Path, s_min: float | None = None, alpha: float | None = None, n_max: int = 64) -> Path:
    """Heat map of N* (capped at ``n_max``) over a grid of (mu, sigma); ``s_min`` and ``alpha``
    default to OptScale's (:data:`optscale.policies.optscale.DEFAULT_TARGET`)."""
    from matplotlib.colors import LogNorm

    from ..policies.optscale import DEFAULT_TARGET

    from ..stats import min_samples

    s_min = DEFAULT_TARGET[0] if s_min is None else s_min
    alpha = DEFAULT_TARGET[1] if alpha is None else alpha
    plt = pyplot()
    mu = np.linspace(0.4, 1.4, 201)
    sigma = np.geomspace(0.005, 0.5, 200)
    n = min_samples(mu[None, :], sigma[:, None], s_min, alpha, n_max)
    fig, ax = plt.subplots(figsize=(7, 5))
    mesh = ax.pcolormesh(mu, sigma, n, shading="auto", cmap="viridis",
                         norm=LogNorm(vmin=1, vmax=n_max))
    ax.contour(mu, sigma, n, levels=[1.5, 4.5, 8.5, 16.5, 32.5], colors="w", linewidths=0.6)
    ax.set_yscale("log")
    ax.set_xlabel(r"$\mu$")
    ax.set_ylabel(r"$\sigma$")
    ax.set_title(rf"$N^*$ for $s_{{min}}={s_min}$, $\alpha={alpha}$ (capped at {n_max})")
    fig.colorbar(mesh, ax=ax, label="N*")
    return save_figure(fig, path)


def calibration_plot(pred: Prediction, mean, std, path: str | Path, title: str) -> Path:
    """A predictor's held-out predictions: predicted vs true mean and std, and empirical vs
    nominal coverage of its central predictive intervals."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, p, t, name in ((axes[0], pred.mean, mean, "score mean"), (axes[1], pred.std, std, "score std")):
        lo, hi = float(min(p.min(), t.min())), float(max(p.max(), t.max()))
        ax.scatter(p, t, s=4, alpha=0.35)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlabel=f"predicted {name}", ylabel=f"true {name}", title=f"{name}: RMSE {np.sqrt(np.mean((p - t) ** 2)):.4f}")
    levels = np.linspace(0.05, 0.95, 19)
    for k, name in ((0, "mean"), (1, "std")):
        truth = mean if k == 0 else std
        covered = []
        for c in levels:
            bounds = pred.interval(c)
            covered.append(np.mean((truth >= bounds[2 * k]) & (truth <= bounds[2 * k + 1])))
        axes[2].plot(levels, covered, marker="o", ms=3, label=f"score {name}")
    axes[2].plot([0, 1], [0, 1], "k--", lw=1)
    axes[2].set(xlabel="nominal coverage", ylabel="empirical coverage", title="central predictive intervals")
    axes[2].legend()
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)
