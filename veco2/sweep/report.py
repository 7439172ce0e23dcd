"""A study's report: ``best.yaml`` (an ablation file), ``trials.csv``, plots and ``report.md``.

:func:`best_ablation` writes the best trial's parameters into the sweep's ablation file;
:func:`write_report` writes everything into the output directory (atomically: several workers may
write it, the last one sees the most trials).  The outputs are listed in docs/sweeps.md.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import yaml

from ..config import load_config, read_yaml
from ..fileio import atomic_write, write_json, write_text
from .spec import Sweep
from .storage import _redact

log = logging.getLogger(__name__)


def best_ablation(sweep: Sweep, study, name: str = "tuned") -> tuple[dict, str]:
    """The best trial's parameters as an ablation file (the schema of ``ablations/*.yaml``): the
    sweep's ablation file with the tuned keys set.  Returns (mapping, YAML text with a header)."""
    best = study.best_trial
    ablation = sweep.settings.pretrain.ablation
    data: dict = read_yaml(ablation) if ablation else {}
    data = copy.deepcopy(data)
    data["name"] = name
    data["description"] = (f"Tuned by Optuna study {study.study_name!r}: trial {best.number}, proxy "
                           f"{best.value:.3f}")
    for key, value in best.params.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    terms = {k.removeprefix("proxy_"): v for k, v in best.user_attrs.items() if k.startswith("proxy_")}
    header = (f"# Found by `veco2 sweep` (study {study.study_name!r}, sweep config {sweep.source}).\n"
              f"# Best trial {best.number}: proxy {best.value:.4f} = weighted mean of {terms}\n"
              f"# with weights {sweep.settings.proxy.weights.as_dict()}, after {sweep.settings.trial.steps} steps "
              f"from a shared start ({sweep.settings.start.steps} warm-start steps).\n"
              "# Demo-scale proxies: re-check with the full XTREME evaluation before relying on these values.\n")
    # the same file must load as an ablation variant
    text = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return data, text


def trials_table(study):
    """All trials as a pandas DataFrame (Optuna's ``trials_dataframe`` plus retry provenance)."""
    frame = study.trials_dataframe(attrs=("number", "value", "datetime_start", "datetime_complete", "duration",
                                          "params", "user_attrs", "state", "intermediate_values"))
    frame["retry_of"] = [t.system_attrs.get("failed_trial") for t in study.trials]
    return frame


PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "slice": "plot_slice",
    "contour": "plot_contour",
    "intermediate_values": "plot_intermediate_values",
}


def write_plots(study, plot_dir: Path) -> dict[str, str]:
    """Matplotlib plots (PNG + SVG) from ``optuna.visualization.matplotlib``; a plot that cannot be
    drawn yet (too few trials, one parameter for a contour, ...) is skipped with its reason."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plot_dir.mkdir(parents=True, exist_ok=True)
    status = {}
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = getattr(ovm, function)(study)
            figure = result.figure if hasattr(result, "figure") else result.flat[0].figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure.tight_layout()
            for suffix in ("png", "svg"):
                tmp = plot_dir / f".{name}.tmp.{suffix}"
                figure.savefig(tmp, format=suffix, dpi=110)
                tmp.replace(plot_dir / f"{name}.{suffix}")
            plt.close(figure)
            status[name] = "written"
        except Exception as err:  # noqa: BLE001 -- a plot is optional; the reason goes in the report
            status[name] = f"skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.info("plot %s skipped: %s", name, status[name])
        finally:
            plt.close("all")
    return status


def write_report(sweep: Sweep, study, out_dir: str | Path, storage_url: str | None = None,
                 install_ablation: str | Path | None = None, name: str = "tuned") -> dict:
    """Write ``best.yaml``, ``trials.csv``, ``plots/`` and ``report.md`` into ``out_dir`` (atomic
    writes; several workers may write it, the last one sees the most trials).  ``install_ablation``
    copies best.yaml there too (e.g. ``ablations/tuned.yaml``)."""
    from optuna.trial import TrialState

    out_dir = Path(out_dir)
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    frame = trials_table(study)
    with atomic_write(out_dir / "trials.csv", "w") as handle:
        frame.to_csv(handle, index=False)
    plots = write_plots(study, out_dir / "plots")
    summary: dict = {"study": study.study_name, "counts": counts, "plots": plots,
                     "storage": _redact(storage_url) if storage_url else str(out_dir / "optuna-journal.log")}
    if counts["COMPLETE"]:
        data, text = best_ablation(sweep, study, name)
        write_text(out_dir / "best.yaml", text)
        load_config(out_dir / "best.yaml")  # proves the file is a valid ablation
        if install_ablation:
            write_text(install_ablation, text)
        best = study.best_trial
        summary.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                        "best_terms": {k.removeprefix("proxy_"): v for k, v in best.user_attrs.items()
                                       if k.startswith("proxy_")}})
    lines = [f"# Sweep `{study.study_name}`", "",
             f"Sweep config `{sweep.source}`; storage `{summary['storage']}`.", "",
             "Trials: " + ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v) + ".", "",
             f"Proxy = Σ w·s / Σ w over {sweep.settings.proxy.weights.as_dict()} (each term in percent).", ""]
    if "best_trial" in summary:
        lines += [f"Best trial {summary['best_trial']}: proxy {summary['best_value']:.3f}, terms "
                  f"{summary['best_terms']}", "", "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.6g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                  for k, v in summary["best_params"].items()]
        lines += ["", "Ablation file: `best.yaml`.", ""]
    lines += ["## Plots", ""]
    lines += [f"![{k}](plots/{k}.png)" if v == "written" else f"- {k}: {v}" for k, v in plots.items()]
    lines += ["", "## Trials", "", frame.drop(columns=[c for c in frame.columns if c.startswith("datetime")])
              .to_markdown(index=False), ""]
    write_text(out_dir / "report.md", "\n".join(lines))
    write_json(out_dir / "summary.json", summary)
    return summary
