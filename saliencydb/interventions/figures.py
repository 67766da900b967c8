"""The validation figure (paper figures 10, 16, 17): each metric against k, one line per filter choice with
its bootstrap 95% interval; the whole-network fine-tuning step as a horizontal line and band."""

from __future__ import annotations

from pathlib import Path

from .filters import LEAST_SALIENT, RANDOM, SALIENT, WHOLE_NETWORK

STYLE = {SALIENT: ("#d1242f", "o", "salient filters"), RANDOM: ("#8c959f", "s", "random filters"),
         LEAST_SALIENT: ("#0969da", "^", "least salient filters"), WHOLE_NETWORK: ("#1a7f37", None, "whole network")}
TITLES = {
    "delta_pred_conf": "change in predicted-class confidence",
    "delta_true_conf": "change in true-class confidence",
    "correct_after": "share classified correctly after",
    "nb_corrected_share": "share of misclassified neighbours corrected",
    "nb_delta_true_conf": "neighbours' change in true-class confidence",
}


def validate_figure(result, out: str | Path) -> Path:
    """Write the figure of a ``validate`` result (a ``Validation``) to ``out`` (PNG, PDF or SVG by suffix)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = ["delta_pred_conf", "delta_true_conf", "correct_after"]
    if result.method == "finetune":
        metrics += ["nb_corrected_share", "nb_delta_true_conf"]
    fig = Figure(figsize=(3.4 * len(metrics), 3.2), dpi=130)
    FigureCanvasAgg(fig)
    ks = result.ks
    for j, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        for name in (SALIENT, RANDOM, LEAST_SALIENT, WHOLE_NETWORK):
            stats = [(r.k, r.metric(m)) for r in result.table if r.filters == name]
            stats = [(k, s) for k, s in stats if s is not None and s.mean is not None]
            if not stats:
                continue
            colour, marker, label = STYLE[name]
            if name == RANDOM and getattr(result, "random_draws", 1) > 1:
                label += f" (mean of {result.random_draws} draws)"
            if name == WHOLE_NETWORK:
                s = stats[0][1]
                ax.axhline(s.mean, color=colour, linestyle="--", linewidth=1.4, label=label)
                ax.axhspan(s.low, s.high, color=colour, alpha=0.12, linewidth=0)
                continue
            x = [k for k, _ in stats]
            y = [s.mean for _, s in stats]
            err = [[s.mean - s.low for _, s in stats], [s.high - s.mean for _, s in stats]]
            ax.errorbar(x, y, yerr=err, color=colour, marker=marker, markersize=4, linewidth=1.5, capsize=2.5, label=label)
        ax.axhline(0, color="#d0d7de", linewidth=0.8, zorder=0)
        ax.set_xscale("log" if min(ks) > 0 and max(ks) / min(ks) >= 10 else "linear")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("k (filters edited)")
        ax.set_title(f"({chr(97 + j)}) {TITLES[m]}", fontsize=9)
        ax.tick_params(labelsize=8)
        if j == 0:
            ax.legend(fontsize=7, frameon=False)
    which = "correctly classified" if result.which == "correct" else "misclassified"
    extra = (f", step {result.lr:g}" if result.method == "finetune"
             else f", sigma {result.sigma:g}" if result.method == "perturb" else "")
    fig.suptitle(f"{result.method} on {result.samples} {which} samples of {result.split}{extra} "
                 f"(bars: bootstrap 95% intervals)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    return out
