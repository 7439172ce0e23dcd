"""The report's figures, drawn with matplotlib (object-oriented API, rendered by Agg) from a
:class:`~veco2.report.load.ResultsTree`.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` (the notebook shows them
directly); :func:`save_figure` writes it as PNG and SVG.  Figures stay readable in greyscale:
variants differ by hatch pattern (bars) or line style + marker (lines), never by colour alone;
heat-map cells carry their value as text.  Axes are labelled with units: scores are percent
(0-100), deltas are percentage points, losses are nats.

A missing value is drawn as a gap (no bar / no point / a hatched "—" cell), never as 0.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from veco2.fileio import atomic_write
from veco2.xtreme.aggregate import RETRIEVAL_TASKS, TASKS

from .load import ResultsTree
from .tables import AVERAGE, TASK_LABELS, _stat, per_language_means

# Greyscale-safe styles, cycled per variant.  Colours are a colour-blind-safe set (Okabe-Ito) that
# also differ in lightness; hatches / dashes / markers carry the distinction when printed grey.
COLOURS = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#F0E442")
BAR_COLOURS = ("#D9D9D9",) + COLOURS[1:]  # a light first bar keeps its black error bar visible
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)), (0, (3, 1, 3, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# One panel per objective term.  The logged total ("loss") is left out: it sums terms of different
# scales with the variant's weights, so its curves are not comparable across variants.
LOSS_TERMS = {"loss_mlm": "MLM loss", "loss_seq": "sequence contrastive loss",
              "loss_tok": "token contrastive loss"}  # fmt: skip


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize, layout="constrained", squeeze: bool = True):
    """Like ``pyplot.subplots`` but without pyplot: a bare :class:`Figure` renders through Agg when
    saved, needs no GUI backend and leaves the caller's backend (e.g. Jupyter inline) alone."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _style(i: int) -> dict:
    return {"color": COLOURS[i % len(COLOURS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _placeholder(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_ablation_bars(tree: ResultsTree) -> Figure:
    """Grouped bars: one group per task (+ Avg), one hatched bar per variant, error bars = seed std."""
    columns = [("task", t, TASK_LABELS[t]) for t in TASKS] + [("xtreme", "xtreme", AVERAGE)]
    variants = tree.variants
    fig, ax = _subplots(figsize=(10, 4), layout="constrained")
    if not variants or tree.summary.empty:
        _placeholder(ax, "no XTREME results available")
        return fig
    width = 0.8 / len(variants)
    x = np.arange(len(columns))
    for i, variant in enumerate(variants):
        stats = [_stat(tree, variant, level, name) for level, name, _ in columns]
        means = np.array([m for m, _, _ in stats])
        stds = np.array([0.0 if _nan(s) else s for _, s, _ in stats])
        positions = x - 0.4 + width * (i + 0.5)
        present = ~np.isnan(means)  # missing values are gaps, not zero-height bars
        ax.bar(positions[present], means[present], width, yerr=stds[present], capsize=2, label=variant,
               color=BAR_COLOURS[i % len(BAR_COLOURS)], edgecolor="black", linewidth=0.6, hatch=HATCHES[i % len(HATCHES)],
               error_kw={"elinewidth": 0.8})
        for pos in positions[~present]:
            ax.text(pos, 1, "—", ha="center", va="bottom", rotation=90)
    ax.set_xticks(x, [label for _, _, label in columns])
    ax.set_xlabel("XTREME task")
    ax.set_ylabel("score (%)  [mean ± std over seeds]")
    ax.set_title("Ablation: XTREME scores per task")
    ax.legend(title="variant", ncols=min(len(variants), 4), loc="upper right", fontsize=8)
    ax.grid(axis="y", linewidth=0.3)
    return fig


def plot_delta_heatmap(tree: ResultsTree, tasks=None, *, baseline: str | None = None) -> Figure:
    """Per-language score deltas (variant − baseline, percentage points): one panel per task.

    Rows of a panel: the non-baseline variants; columns: the task's languages.  One symmetric
    colour scale for all panels; every cell is annotated with its signed value so the figure reads
    without colour; a missing cell is hatched and shows "—".
    """
    baseline = baseline or tree.reference
    tasks = [t for t in (tasks or TASKS) if t in tree.languages]
    deltas = {}
    for task in tasks:
        means = per_language_means(tree, task)
        others = [v for v in means.index if v != baseline]
        if baseline in means.index and others and not means.loc[baseline].isna().all():
            deltas[task] = means.loc[others].sub(means.loc[baseline], axis=1)
    if not deltas:
        fig, ax = _subplots(figsize=(5, 2), layout="constrained")
        _placeholder(ax, f"no {baseline} baseline or no other variant to compare per language")
        return fig
    n_rows = max(len(d) for d in deltas.values())
    n_cols = max(len(d.columns) for d in deltas.values())
    size = (max(5.0, 0.55 * n_cols + 3), (0.4 * n_rows + 0.9) * len(deltas))
    fig, axes = _subplots(len(deltas), 1, figsize=size, squeeze=False)
    finite = np.concatenate([d.to_numpy(dtype=float).ravel() for d in deltas.values()])
    limit = float(np.nanmax(np.abs(finite))) if np.isfinite(finite).any() else 1.0
    limit = limit or 1.0
    image = None
    for ax, (task, delta) in zip(axes[:, 0], deltas.items()):
        values = delta.to_numpy(dtype=float)
        # Pad to the widest panel so cells have the same size in every panel.
        padded = np.full((values.shape[0], n_cols), np.nan)
        padded[:, : values.shape[1]] = values
        image = ax.imshow(np.ma.masked_invalid(padded), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for (r, c), value in np.ndenumerate(values):
            if np.isnan(value):
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="grey"))
                ax.text(c, r, "—", ha="center", va="center")
            else:
                dark = abs(value) > 0.6 * limit
                ax.text(c, r, f"{value:+.1f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlim(-0.5, n_cols - 0.5)
        ax.set_xticks(range(values.shape[1]), list(delta.columns), fontsize=8)
        ax.set_yticks(range(len(delta.index)), list(delta.index), fontsize=8)
        ax.set_ylabel(TASK_LABELS[task], rotation=0, ha="right", va="center", fontweight="bold")
    axes[-1, 0].set_xlabel("test language")
    fig.suptitle(f"Per-language Δ score vs {baseline} (variant − {baseline})")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label=f"Δ score vs {baseline} (points)", shrink=0.6)
    return fig


def plot_loss_curves(tree: ResultsTree) -> Figure:
    """Pre-training loss per term (one panel each) against steps, one line style per variant."""
    terms = [t for t in LOSS_TERMS if any(t in frame for frame in tree.metrics.values())]
    fig, axes = _subplots(1, max(len(terms), 1), figsize=(3.4 * max(len(terms), 1), 3.2), layout="constrained",
                             squeeze=False)
    if not terms:
        _placeholder(axes[0, 0], "no pre-training metrics logs (metrics.jsonl) available")
        return fig
    for ax, term in zip(axes[0], terms):
        for i, variant in enumerate(tree.variants):
            frame = tree.metrics.get(variant)
            if frame is None or term not in frame or frame[term].isna().all():
                continue
            every = max(1, len(frame) // 12)  # markers sparse enough to see the line style
            ax.plot(frame["step"], frame[term], label=variant, markevery=every, markersize=4, linewidth=1.2,
                    **_style(i))
        ax.set_title(LOSS_TERMS[term])
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("loss (nats)")
        ax.grid(linewidth=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Pre-training loss curves")
    return fig


def plot_retrieval_by_layer(tree: ResultsTree) -> Figure:
    """Retrieval task score against the encoder layer (0 = embeddings), one line per variant.

    The layer sweep comes from ``veco2 evaluate --layer all`` (``task_score_by_layer`` in the
    retrieval results.json); without it the panel says "not available".
    """
    tasks = [t for t in TASKS if t in RETRIEVAL_TASKS]
    fig, axes = _subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), layout="constrained", squeeze=False)
    by_layer = tree.by_layer
    for ax, task in zip(axes[0], tasks):
        sub = by_layer[by_layer["task"] == task] if not by_layer.empty else by_layer
        if sub.empty:
            _placeholder(ax, f"{TASK_LABELS[task]} by layer: not available\n(run veco2 evaluate --layer all)")
            continue
        for i, variant in enumerate(tree.variants):
            line = sub[sub["variant"] == variant].sort_values("layer")
            if not line.empty:
                ax.plot(line["layer"], line["score"], label=variant, markersize=4, **_style(i))
        metric = "F1" if task == "bucc2018" else "accuracy"
        ax.set_title(f"{TASK_LABELS[task]} by layer")
        ax.set_xlabel("encoder layer (0 = embeddings)")
        ax.set_ylabel(f"{metric} (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(linewidth=0.3)
        ax.legend(fontsize=7)
    return fig


def plot_word_translation_by_layer(tree: ResultsTree) -> Figure:
    """Word-translation accuracy on held-out dictionary entries (summary.json ``word_translation``)
    against the encoder layer, mean over languages, one line per pre-trained variant."""
    fig, axes = _subplots(1, 1, figsize=(4.6, 3.2), layout="constrained", squeeze=False)
    ax = axes[0][0]
    drawn = False
    for i, variant in enumerate(tree.pretrained):
        probe = (tree.pretrain.get(variant) or {}).get("word_translation") or {}
        layers = sorted((probe.get("by_layer") or {}).items(), key=lambda kv: int(kv[0]))
        points = [(int(layer), scores["mean"]) for layer, scores in layers if "mean" in scores]
        if points:
            ax.plot(*zip(*points), label=variant, markersize=4, **_style(i))
            drawn = True
    if not drawn:
        _placeholder(ax, "word translation by layer: not available\n(summary.json without word_translation)")
        return fig
    ax.set_title("Word translation (held-out dictionary entries) by layer")
    ax.set_xlabel("encoder layer (0 = embeddings)")
    ax.set_ylabel("accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(linewidth=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_sweep(study: str, info: dict) -> Figure | None:
    """Optuna sweep from ``trials.csv``: objective per trial with the best-so-far line, and the
    objective against each swept parameter.  None when the study has no trials.csv."""
    trials = info.get("trials")
    if trials is None:
        return None
    done = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()].sort_values("number")
    params = [c for c in trials.columns if c.startswith("params_")][:4]
    fig, axes = _subplots(1, 1 + len(params), figsize=(3.6 * (1 + len(params)), 3.2), layout="constrained",
                             squeeze=False)
    ax = axes[0, 0]
    best = done["value"].cummax() if info.get("direction", "maximize") == "maximize" else done["value"].cummin()
    ax.plot(done["number"], done["value"], "o", color="black", fillstyle="none", label="complete trial")
    ax.step(done["number"], best, where="post", linestyle="--", color="black", label="best so far")
    failed = trials[trials["state"] != "COMPLETE"]
    ax.set_title(f"{study}: {len(done)} complete, {len(failed)} other trials")
    ax.set_xlabel("trial number")
    ax.set_ylabel("objective (score, %)")
    ax.grid(linewidth=0.3)
    ax.legend(fontsize=7)
    for ax, param in zip(axes[0, 1:], params):
        ax.plot(done[param], done["value"], "s", color="black", fillstyle="none")
        ax.set_xlabel(param.removeprefix("params_"))
        ax.set_ylabel("objective (score, %)")
        ax.grid(linewidth=0.3)
    return fig


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure encoded as ``png`` or ``svg`` (no timestamps, so re-runs give identical files)."""
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(buffer, format=fmt, dpi=120, metadata=metadata)
    return buffer.getvalue()


def save_figure(fig: Figure, out_dir: str | Path, name: str) -> dict[str, bytes]:
    """Atomically write ``{name}.png`` and ``{name}.svg``; returns their bytes and closes the figure."""
    out_dir = Path(out_dir)
    encoded = {}
    for fmt in ("png", "svg"):
        encoded[fmt] = figure_bytes(fig, fmt)
        fig.set_layout_engine("none")  # the layout solved for the PNG holds for the SVG: solve it once
        with atomic_write(out_dir / f"{name}.{fmt}", "wb") as handle:
            handle.write(encoded[fmt])
    return encoded


def all_figures(tree: ResultsTree) -> list[tuple[str, str, Figure]]:
    """``(name, caption, figure)`` for every figure of the report, in report order."""
    figures = [
        ("ablation_bars", "XTREME score per task and variant; bars = mean over seeds, error bars = sample std; "
                          "missing values are left out (marked —), not drawn as zero.", plot_ablation_bars(tree)),
    ]
    figures.append(("delta_heatmap", f"Per-language score difference of each variant against {tree.reference} "
                                     "(percentage points; QA: (F1 + EM) / 2), one panel per task; hatched — = missing.",
                    plot_delta_heatmap(tree)))
    figures.append(("loss_curves", "Pre-training loss per objective term against optimisation steps "
                                   "(metrics.jsonl).", plot_loss_curves(tree)))
    figures.append(("retrieval_by_layer", "Retrieval score against the encoder layer used for the sentence "
                                          "vector (layer sweep of veco2 evaluate --layer all).",
                    plot_retrieval_by_layer(tree)))
    figures.append(("word_translation_by_layer", "Word-translation accuracy on held-out dictionary entries against the "
                                                 "encoder layer, mean over languages (summary.json).",
                    plot_word_translation_by_layer(tree)))
    for study, info in tree.sweeps.items():
        fig = plot_sweep(study, info)
        if fig is not None:
            figures.append((f"sweep_{study}", f"Optuna sweep {study!r}: objective per trial and against each "
                                              "swept parameter (trials.csv).", fig))
    return figures
