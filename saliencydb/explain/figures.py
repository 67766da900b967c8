"""Figures: one sample's explanation, and group-average profiles."""

from __future__ import annotations

import numpy as np

from ..saliency import UnitLayout
from .maps import display_map, overlay


def _wrap(text: str, width: int = 48) -> str:
    """Each line of a panel title wrapped to fit a third of the figure's width."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


MAX_LAYER_LABELS = 28  # layer names under a profile, at most (every k-th layer beyond)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def sorted_layer_positions(z: np.ndarray, layout: UnitLayout):
    """Per layer: x positions (layer i spans [i, i+1]), values sorted descending, and the unit id at each position."""
    out = []
    for layer in layout.layers:
        vals = np.asarray(z[layer.offset : layer.stop], dtype=np.float64)
        order = np.argsort(-vals, kind="stable")
        xs = layer.index + (np.arange(layer.out_channels) + 0.5) / layer.out_channels
        out.append((xs, vals[order], layer.offset + order))
    return out


def plot_profile(ax, z: np.ndarray, layout: UnitLayout, marks=None, color: str = "#3b6ea5", label: str | None = None):
    """A standardised profile layer by layer: each layer's values sorted descending, layers of equal width."""
    marks = set(int(u) for u in (marks if marks is not None else []))
    first = True
    for (xs, vals, units), layer in zip(sorted_layer_positions(z, layout), layout.layers):
        edges = layer.index + np.arange(layer.out_channels + 1) / layer.out_channels
        ax.stairs(vals, edges, baseline=0, fill=True, color=color, alpha=0.25)
        ax.stairs(vals, edges, baseline=None, color=color, linewidth=1.2, label=label if first else None)
        first = False
        hit = np.array([u in marks for u in units])
        if hit.any():
            ax.scatter(xs[hit], vals[hit], s=28, color="#d62728", zorder=3, edgecolor="white", linewidth=0.6)
    n = len(layout.layers)
    for i in range(1, n):
        ax.axvline(i, color="0.8", linewidth=0.8, zorder=0)
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.set_xlim(0, n)
    step = max(1, int(np.ceil(n / MAX_LAYER_LABELS)))
    ticks = list(range(0, n, step))
    ax.set_xticks([i + 0.5 for i in ticks])
    # many layers: vertical labels, which cannot run into each other
    ax.set_xticklabels([layout.layers[i].name for i in ticks], rotation=90 if n > 6 else 0, ha="center", fontsize=7)
    ax.set_ylabel("standardised saliency z")
    ax.grid(axis="y", color="0.92")


def explain_figure(path, **parts) -> None:
    """Image with label/prediction, input-space map, GradCAM, and the profile with the boosted units marked."""
    plt = _pyplot()
    fig = build_explain_figure(**parts)
    fig.savefig(path)
    plt.close(fig)


def build_explain_figure(*, image: np.ndarray, input_map: np.ndarray, cam: np.ndarray | None, z: np.ndarray,
                         layout: UnitLayout, boosted, meta: dict, top_rows: list[dict], cam_layer: str = "the last conv layer",
                         channel_reduce: str = "max-abs"):
    """The figure of ``explain_figure``, laid out by matplotlib's constrained layout so that no
    title or label is clipped, whatever the number of layers (ResNet-50: 53)."""
    import textwrap

    plt = _pyplot()
    fig = plt.figure(figsize=(12, 7.6), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1.2, 1])
    ok = "correct" if meta["correct"] else "WRONG"
    fig.suptitle(textwrap.fill(f"sample {meta['sample_id']} ({meta['split']}, {meta['key']}): label {meta['label_name']}, "
                               f"predicted {meta['pred_name']} ({ok})", 100), fontsize=13, fontweight="bold")
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(_wrap(f"input\np(true={meta['label_name']}) = {meta['true_conf']:.3f}\n"
                       f"p(pred={meta['pred_name']}) = {meta['pred_conf']:.3f}"), fontsize=10)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(overlay(image, display_map(input_map)), interpolation="nearest")
    ax.set_title(_wrap(f"input-space saliency ({len(boosted)} units boosted)\n"
                       f"channels {channel_reduce}, >90th pct, 3x3 blur, clipped at 99th"), fontsize=10)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 2])
    if cam is not None:
        c = cam / cam.max() if cam.max() > 0 else cam
        ax.imshow(overlay(image, c, cmap="jet", max_alpha=0.6), interpolation="nearest")
        ax.set_title(_wrap(f"GradCAM for the prediction ({meta['pred_name']})\nat {cam_layer}"), fontsize=10)
    else:
        ax.text(0.5, 0.5, "GradCAM unavailable\n(TorchScript model)", ha="center", va="center")
    ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    plot_profile(ax, z, layout, marks=boosted)
    names = ", ".join(f"{r['layer']}[{r['channel']}]" for r in top_rows[:5])
    ax.set_title(textwrap.fill(f"standardised profile, each layer sorted descending; red = boosted units (top: {names}"
                               f"{', ...' if len(top_rows) > 5 else ''})", 150), fontsize=10)
    return fig


def group_profile_figure(path, *, groups: list[tuple[str, np.ndarray | None, int]], layout: UnitLayout, title: str) -> None:
    """One row per group (name, mean standardised profile or None, count), layers sorted as in ``plot_profile``."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(groups), 1, figsize=(12, 3.2 * len(groups) + 0.8), dpi=110, sharey=True, squeeze=False)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    colors = ["#2a9d5c", "#d62728", "#3b6ea5"]
    for ax, (name, z, n), color in zip(axes[:, 0], groups, colors):
        if z is None:
            ax.text(0.5, 0.5, f"no {name} samples", ha="center", va="center", transform=ax.transAxes, fontsize=12)
            ax.set_xticks([])
        else:
            plot_profile(ax, z, layout, color=color)
        ax.set_title(f"{name} ({n} samples): mean standardised profile", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
