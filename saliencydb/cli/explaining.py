"""Commands that explain samples: explain, profile-plot, check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from .output import emit, handle_errors, db_option, as_of_option, emit_rows, text_format_option, progress_bars

CHANNEL_REDUCTIONS = ("max-abs", "abs-max")  # saliency.input_space's, named here so that --help loads no torch
channel_reduce_option = click.option(
    "--channel-reduce", type=click.Choice(CHANNEL_REDUCTIONS),
    help="How an input-space map reduces a pixel's colour channels: max-abs = max over channels of |gradient| (the "
         "default); abs-max = |max over channels of the signed gradient| (the paper authors' code). Same for one channel.")


def _channel_reduce(channel_reduce: str | None, unused: str | None) -> str:
    """The --channel-reduce to use; given where no input-space map is drawn (``unused`` says where), one clear line."""
    from ..errors import QueryError

    if channel_reduce is not None and unused:
        raise QueryError(f"--channel-reduce applies to input-space (pixel) maps; {unused} draws none: drop it")
    return channel_reduce or CHANNEL_REDUCTIONS[0]


@click.command()
@db_option
@click.option("--id", "sample_id", type=int, help="Id of the stored sample to explain (writes one figure).")
@click.option("--out", required=True, type=click.Path(), help="FILE.png for --id; a directory for the --errors gallery (DIR/index.html).")
@click.option("--top-k", default=10, show_default=True, type=int, help="Salient units to boost (the sample's top-k).")
@click.option("--units", help="Boost these units instead of the top-k: LAYER:CHANNEL,... (layer name such as features.3, or layer index).")
@click.option("--errors", is_flag=True, help="Gallery: the most confident mistakes with their maps and saliency neighbours.")
@click.option("--split", help="Gallery: only mistakes of this split.")
@click.option("--limit", default=12, show_default=True, type=int, help="Gallery: number of mistakes.")
@click.option("--neighbors", "n_neighbors", default=5, show_default=True, type=int, help="Gallery: neighbours per mistake.")
@channel_reduce_option
@text_format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@handle_errors
def explain(db, sample_id, out, top_k, units, errors, split, limit, n_neighbors, channel_reduce, fmt, quiet, as_of):
    """Input-space saliency of a sample's salient filters, GradCAM and its profile in one figure; or (--errors) an HTML gallery."""
    from ..errors import QueryError
    from ..explain import Explainer, check_out_file, explain_sample, explain_text_sample
    from ..query import open as open_db

    if errors == (sample_id is not None):
        raise QueryError("give --id ID for one sample's figure, or --errors [--split S] for a gallery of mistakes")
    if not errors and split is not None:
        raise QueryError("--split selects the gallery's mistakes; add --errors (or drop --split)")
    with open_db(db, as_of=as_of) as d:
        if errors:
            _gallery(d, out, split=split, limit=limit, n_neighbors=n_neighbors, top_k=top_k, fmt=fmt, quiet=quiet,
                     channel_reduce=_channel_reduce(channel_reduce, None))
            return
        check_out_file(out)
        d.sample(sample_id)  # an unknown id fails before the model is loaded
        text = d.modality == "text"
        ex = Explainer(d, _channel_reduce(channel_reduce, "a text database's token saliency" if text else None))
        explainer = explain_text_sample if ex.modality == "text" else explain_sample
        result = explainer(ex, sample_id, out, top_k=top_k, units=ex.parse_units(units) if units else None)
    if fmt != "table":  # csv: the rows of the main table
        emit(result, fmt)
        return
    if ex.modality == "text":
        _print_tokens(result)
        return
    s, c, m = result.sample, result.confidences, result.map
    click.echo(f"sample {s.sample_id} ({s.split}, {s.key}): label {s.label_name}, predicted {s.pred_name} "
               f"({'correct' if s.correct else 'wrong'}); p(true) {c.true_conf:.3f}, p(pred) {c.pred_conf:.3f}")
    emit_rows(result.rows(), "table", title="boosted units (standardised saliency z)")
    corr = "" if m.spearman_vs_gradcam is None else f"; Spearman with GradCAM {m.spearman_vs_gradcam:.2f}"
    click.echo(f"input-space map (channels {m.channel_reduce}): the top 5% of pixels hold {m.top5pct_mass:.0%} of the "
               f"saliency{corr}")
    click.echo(f"wrote {result.out}")


def _print_tokens(result) -> None:
    s, c = result.sample, result.confidences
    click.echo(f"sample {s.sample_id} ({s.split}, {s.key}) \"{s.text}\": label {s.label_name}, predicted {s.pred_name} "
               f"({'correct' if s.correct else 'wrong'}); p(true) {c.true_conf:.3f}, p(pred) {c.pred_conf:.3f}")
    emit_rows([u.to_dict() for u in result.boosted_units], "table", title="boosted units (standardised saliency z)")
    emit_rows(result.rows(), "table", title="token saliency (gradient norm at each token's embedding)")
    top = sorted(result.tokens, key=lambda t: -t.score)[:3]
    click.echo("most salient tokens: " + ", ".join(f"{t.token} ({t.score:.3g})" for t in top))
    click.echo(f"wrote {result.out}")


def _gallery(d, out, *, split, limit: int, n_neighbors: int, top_k: int, fmt: str, quiet: bool, channel_reduce: str) -> None:
    """explain --errors: write the gallery of mistakes and print its summary."""
    from ..explain import Explainer, gallery
    from ..explain.gallery import check_out_dir

    check_out_dir(out)
    with progress_bars(not quiet and fmt == "table") as progress:
        result = gallery(Explainer(d, channel_reduce), out, split=split, limit=limit, n_neighbors=n_neighbors, top_k=top_k,
                         progress=progress)
    if fmt != "table":
        emit(result, fmt)
    else:
        click.echo(f"wrote {result.out} ({len(result.mistakes)} mistakes)")


@click.command("profile-plot")
@db_option
@click.option("--split", help="Only samples of this split.")
@click.option("--cluster", type=int, help="Only samples of this cluster (from `saliencydb clusters`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="FILE.png to write.")
@text_format_option
@as_of_option
@handle_errors
def profile_plot(db, split, cluster, out, fmt, as_of):
    """Mean standardised profile of correct vs incorrect samples, layer by layer (each layer sorted)."""
    from ..explain import check_out_file, profile_plot as draw
    from ..query import open as open_db

    check_out_file(out)  # before the database is read
    with open_db(db, as_of=as_of) as d:
        result = draw(d, out, split=split, cluster=cluster)
    if fmt != "table":
        emit(result, fmt)
        return
    counts = ", ".join(f"{g.count} {g.name}" for g in result.groups)
    emit_rows(result.rows(), "table", title=f"mean standardised saliency per layer, {result.scope} ({counts})")
    click.echo(f"wrote {out}")


@click.command()
@db_option
@click.option("--what", required=True, type=click.Choice(["masking", "smoothgrad", "randomization"]), help="Which check.")
@click.option("--id", "sample_id", type=int, help="Id of the stored sample to check.")
@click.option("--top-k", default=10, show_default=True, type=int, help="Salient units boosted by the input-space map.")
@click.option("--top-p", default=5.0, show_default=True, type=float, help="masking: percentage of pixels masked.")
@click.option("--fill", type=click.Choice(["mean", "black"]), default="mean", show_default=True,
              help="masking: masked pixels become the transform's zero (its mean colour, 0 after normalisation) or black.")
@click.option("--split", help="masking --find-corrections: the split whose mistakes are searched.")
@click.option("--find-corrections", is_flag=True, help="masking: list the mistakes of --split whose true-class confidence rises by --min-rise.")
@click.option("--min-rise", default=0.25, show_default=True, type=float, help="masking --find-corrections: minimum rise of the true-class confidence.")
@click.option("--limit", type=int, help="masking --find-corrections: check at most this many mistakes.")
@click.option("--levels", default="0.01,0.05,0.1,0.5", show_default=True, help="smoothgrad: noise levels (fractions of the input's range).")
@click.option("--n-noise", default=32, show_default=True, type=int, help="smoothgrad: noisy copies per level.")
@click.option("--stats-samples", default=256, show_default=True, type=int,
              help="randomization: samples used to re-standardise each randomised model (0: the database's statistics).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@channel_reduce_option
@text_format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@handle_errors
def check(db, what, sample_id, top_k, top_p, fill, split, find_corrections, min_rise, limit, levels, n_noise,
          stats_samples, seed, channel_reduce, fmt, quiet, as_of):
    """Check an explanation with numbers: masking salient pixels (A.9), SmoothGrad agreement (A.1), model randomisation (A.11)."""
    from ..explain import parse_levels
    from ..query import open as open_db

    _check_check_args(what, sample_id, split, find_corrections)
    channel_reduce = _channel_reduce(channel_reduce, "smoothgrad (parameter saliency)" if what == "smoothgrad" else None)
    level_list = parse_levels(levels)
    with progress_bars(not quiet and fmt == "table") as progress:
        with open_db(db, as_of=as_of) as d:
            if sample_id is not None:
                d.sample(sample_id)  # an unknown id fails before the model is loaded
            else:
                d.ids_where(split=split)  # an unknown split too
            settings = CheckSettings(top_k=top_k, channel_reduce=channel_reduce, seed=seed, top_p=top_p, fill=fill,
                                     split=split, min_rise=min_rise, limit=limit, levels=tuple(level_list),
                                     n_noise=n_noise, stats_samples=stats_samples, progress=progress)
            result = _run_check(d, "corrections" if find_corrections else what, sample_id, settings)
    if fmt != "table":
        emit(result, fmt)
    elif find_corrections:
        _print_corrections(result, settings)
    else:
        _print_check(result, what, settings)


def _check_check_args(what: str, sample_id, split, find_corrections: bool) -> None:
    """Which of --id, --split and --find-corrections go together."""
    from ..errors import QueryError

    if find_corrections:
        if what != "masking" or split is None or sample_id is not None:
            raise QueryError("--find-corrections goes with --what masking --split S (and no --id)")
    elif sample_id is None:
        raise QueryError(f"--what {what} needs --id ID" + (" (or --split S --find-corrections)" if what == "masking" else ""))
    elif split is not None:
        raise QueryError("--split is only used with --find-corrections")


@dataclass(frozen=True)
class CheckSettings:
    """How ``check`` runs its check, whatever the sample.

    Every check: the input-space maps boost the ``top_k`` salient units, reduce channels by ``channel_reduce``; ``seed``.
    masking (and --find-corrections): the top ``top_p`` percent of pixels masked, filled with ``fill`` (mean or black).
    --find-corrections: the mistakes of ``split`` (at most ``limit``) whose true-class confidence rises by ``min_rise``.
    smoothgrad: the noise ``levels`` (fractions of the input's range), ``n_noise`` noisy copies per level.
    randomization: ``stats_samples`` samples re-standardise each randomised model (0: the database's statistics).
    ``progress``: the progress bars of the checks that run over many samples or models.
    """

    top_k: int = 10
    channel_reduce: str = CHANNEL_REDUCTIONS[0]
    seed: int = 0
    top_p: float = 5.0
    fill: str = "mean"
    split: str | None = None
    min_rise: float = 0.25
    limit: int | None = None
    levels: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5)
    n_noise: int = 32
    stats_samples: int = 256
    progress: Any = None


def _run_check(d, what: str, sample_id, s: CheckSettings):
    """Run one check (``what``: masking, smoothgrad, randomization or corrections) on the open database, as ``s`` says."""
    from .. import explain as E

    ex = E.Explainer(d, s.channel_reduce)
    ex.require_images(f"check {what}")
    if what == "corrections":
        return E.find_corrections(ex, s.split, top_p=s.top_p, fill=s.fill, top_k=s.top_k, min_rise=s.min_rise,
                                  seed=s.seed, limit=s.limit, progress=s.progress)
    if what == "masking":
        return E.masking(ex, sample_id, top_p=s.top_p, fill=s.fill, top_k=s.top_k, seed=s.seed)
    if what == "smoothgrad":
        return E.smoothgrad(ex, sample_id, levels=list(s.levels), n=s.n_noise, k=s.top_k, seed=s.seed)
    return E.randomization(ex, sample_id, top_k=s.top_k, stats_samples=s.stats_samples, seed=s.seed, progress=s.progress)


def _print_corrections(result, s: CheckSettings) -> None:
    emit_rows(result.rows(), "table", title=f"mistakes of {result.split} whose true-class confidence rises by "
                                            f">= {s.min_rise:.0%} when the top {s.top_p:g}% salient pixels are masked")
    click.echo(f"{result.found} of {result.mistakes} mistakes ({result.corrected} corrected); controls: "
               f"{result.found_with_random_units} with the maps of {s.top_k} random units, "
               f"{result.found_with_random_pixels} masking random pixels")


def _print_check(result, what: str, settings: CheckSettings) -> None:
    s = result.sample
    click.echo(f"sample {s.sample_id} ({s.key}): label {s.label_name}, predicted {s.pred_name}")
    if what == "masking":
        rows = [{"masked by": r.masked_by, "pixels (changed)": f"{r.pixels} ({r.pixels_changed})",
                 "p(true) before": r.true_conf_before, "p(true) after": r.true_conf_after,
                 "p(pred) before": r.pred_conf_before, "p(pred) after": r.pred_conf_after,
                 "prediction after": r.pred_name_after} for r in result.results]
        emit_rows(rows, "table", title=f"masking the top {settings.top_p:g}% pixels of each map (fill: {settings.fill}); "
                                       f"pred = the original prediction {s.pred_name}")
    elif what == "smoothgrad":
        emit_rows(result.rows(), "table", title=f"SmoothGrad parameter saliency ({settings.n_noise} noisy copies) vs the plain profile")
    else:
        emit_rows(result.rows(), "table", title="cascading randomisation: Spearman correlation with the original map")


COMMANDS = [explain, profile_plot, check]
