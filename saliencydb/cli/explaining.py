"""Commands that explain samples: explain, profile-plot, check."""

from __future__ import annotations

import json

import click

from .output import handle_errors, db_option, as_of_option, emit_rows, json_default, text_format_option, progress_for, close_progress


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
@text_format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@handle_errors
def explain(db, sample_id, out, top_k, units, errors, split, limit, n_neighbors, fmt, quiet, as_of):
    """Input-space saliency of a sample's salient filters, GradCAM and its profile in one figure; or (--errors) an HTML gallery."""
    from ..errors import QueryError
    from ..explain import Explainer, check_out_file, explain_sample, gallery
    from ..explain.gallery import check_out_dir
    from ..query import open as open_db

    if errors == (sample_id is not None):
        raise QueryError("give --id ID for one sample's figure, or --errors [--split S] for a gallery of mistakes")
    if not errors and split is not None:
        raise QueryError("--split selects the gallery's mistakes; add --errors (or drop --split)")
    with open_db(db, as_of=as_of) as d:
        if errors:
            check_out_dir(out)
            progress = progress_for(fmt, quiet)
            try:
                result = gallery(Explainer(d), out, split=split, limit=limit, n_neighbors=n_neighbors, top_k=top_k,
                                 progress=progress)
            finally:
                close_progress(progress)
            if fmt == "json":
                click.echo(json.dumps(result, indent=2, default=json_default))
            elif fmt == "csv":
                emit_rows(result["mistakes"], "csv")
            else:
                click.echo(f"wrote {result['out']} ({len(result['mistakes'])} mistakes)")
            return
        check_out_file(out)
        d.sample(sample_id)  # an unknown id fails before the model is loaded
        ex = Explainer(d)
        result = explain_sample(ex, sample_id, out, top_k=top_k, units=ex.parse_units(units) if units else None).to_dict()
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=json_default))
        return
    if fmt == "csv":  # the boosted units, one row each
        emit_rows(result["boosted_units"], "csv")
        return
    s, c, m = result["sample"], result["confidences"], result["map"]
    click.echo(f"sample {s['sample_id']} ({s['split']}, {s['key']}): label {s['label_name']}, predicted {s['pred_name']} "
               f"({'correct' if s['correct'] else 'wrong'}); p(true) {c['true_conf']:.3f}, p(pred) {c['pred_conf']:.3f}")
    emit_rows(result["boosted_units"], "table", title="boosted units (standardised saliency z)")
    corr = "" if m["spearman_vs_gradcam"] is None else f"; Spearman with GradCAM {m['spearman_vs_gradcam']:.2f}"
    click.echo(f"input-space map: the top 5% of pixels hold {m['top5pct_mass']:.0%} of the saliency{corr}")
    click.echo(f"wrote {result['out']}")


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
    from ..explain import check_out_file, group_profiles
    from ..explain.figures import group_profile_figure
    from ..errors import QueryError
    from ..query import open as open_db
    from ..saliency import UnitLayout

    check_out_file(out)
    with open_db(db, as_of=as_of) as d:
        result = group_profiles(d, split=split, cluster=cluster)
        layout = UnitLayout.from_dict(d.manifest.units)
    try:
        group_profile_figure(out, groups=[(g["name"], g["z"], g["count"]) for g in result["groups"]], layout=layout,
                             title=f"mean standardised saliency profile: {result['scope']}")
    except OSError as e:
        raise QueryError(f"cannot write --out {out!r}: {e.strerror or e}") from None
    summary = {"scope": result["scope"], "out": out,
               "groups": [{k: v for k, v in g.items() if k != "z"} for g in result["groups"]]}
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=json_default))
        return
    by_name = {g["name"]: {l["layer"]: l["mean_z"] for l in (g["layers"] or [])} for g in summary["groups"]}
    counts = ", ".join(f"{g['count']} {g['name']}" for g in summary["groups"])
    rows = [{"layer": l.name, **{f"mean z ({name})": per.get(l.name) for name, per in by_name.items()}} for l in layout.layers]
    if fmt == "csv":
        emit_rows(rows, "csv")
        return
    emit_rows(rows, "table", title=f"mean standardised saliency per layer, {result['scope']} ({counts})")
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
@text_format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@handle_errors
def check(db, what, sample_id, top_k, top_p, fill, split, find_corrections, min_rise, limit, levels, n_noise,
          stats_samples, seed, fmt, quiet, as_of):
    """Check an explanation with numbers: masking salient pixels (A.9), SmoothGrad agreement (A.1), model randomisation (A.11)."""
    from .. import explain as E
    from ..errors import QueryError
    from ..query import open as open_db

    if find_corrections:
        if what != "masking" or split is None or sample_id is not None:
            raise QueryError("--find-corrections goes with --what masking --split S (and no --id)")
    elif sample_id is None:
        raise QueryError(f"--what {what} needs --id ID" + (" (or --split S --find-corrections)" if what == "masking" else ""))
    elif split is not None:
        raise QueryError("--split is only used with --find-corrections")
    try:
        level_list = [float(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise QueryError(f"--levels {levels!r} is not a comma-separated list of numbers such as 0.01,0.05") from None
    progress = progress_for(fmt, quiet)
    try:
        with open_db(db, as_of=as_of) as d:
            if sample_id is not None:
                d.sample(sample_id)  # an unknown id fails before the model is loaded
            else:
                d.ids_where(split=split)  # an unknown split too
            ex = E.Explainer(d)
            if find_corrections:
                result = E.find_corrections(ex, split, top_p=top_p, fill=fill, top_k=top_k, min_rise=min_rise, seed=seed,
                                            limit=limit, progress=progress)
            elif what == "masking":
                result = E.masking(ex, sample_id, top_p=top_p, fill=fill, top_k=top_k, seed=seed)
            elif what == "smoothgrad":
                result = E.smoothgrad(ex, sample_id, levels=level_list, n=n_noise, k=top_k, seed=seed)
            else:
                result = E.randomization(ex, sample_id, top_k=top_k, stats_samples=stats_samples, seed=seed,
                                         progress=progress)
    finally:
        close_progress(progress)
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=json_default))
        return
    if fmt == "csv":  # the rows of the check's table, unformatted
        key = "samples" if find_corrections else {"masking": "results", "smoothgrad": "levels", "randomization": "steps"}[what]
        emit_rows(result[key], "csv")
        return
    if find_corrections:
        emit_rows(result["samples"], "table", title=f"mistakes of {split} whose true-class confidence rises by "
                                                    f">= {min_rise:.0%} when the top {top_p:g}% salient pixels are masked")
        click.echo(f"{result['found']} of {result['mistakes']} mistakes ({result['corrected']} corrected); controls: "
                   f"{result['found_with_random_units']} with the maps of {top_k} random units, "
                   f"{result['found_with_random_pixels']} masking random pixels")
        return
    s = result["sample"]
    click.echo(f"sample {s['sample_id']} ({s['key']}): label {s['label_name']}, predicted {s['pred_name']}")
    if what == "masking":
        rows = [{"masked by": r["masked_by"], "pixels (changed)": f"{r['pixels']} ({r['pixels_changed']})",
                 "p(true) before": r["true_conf_before"], "p(true) after": r["true_conf_after"],
                 "p(pred) before": r["pred_conf_before"], "p(pred) after": r["pred_conf_after"],
                 "prediction after": r["pred_name_after"]} for r in result["results"]]
        emit_rows(rows, "table", title=f"masking the top {top_p:g}% pixels of each map (fill: {fill}); "
                                       f"pred = the original prediction {s['pred_name']}")
    elif what == "smoothgrad":
        emit_rows(result["levels"], "table", title=f"SmoothGrad parameter saliency ({n_noise} noisy copies) vs the plain profile")
    else:
        emit_rows(result["steps"], "table", title="cascading randomisation: Spearman correlation with the original map")


COMMANDS = [explain, profile_plot, check]
