"""Commands that edit the model's salient filters on a copy: intervene, validate, adversarial, fix-group."""

from __future__ import annotations


import click

from .output import (emit, handle_errors, format_option, db_option, as_of_option, wait_option, emit_rows, progress_bars,
                     ci_text as _ci)


def _bench(d, device: str):
    from ..models.device import resolve_device
    from ..interventions import Bench

    return Bench(d, device=resolve_device(device))


def _units_cell(layout, ids, limit: int = 6) -> str:
    from ..interventions import describe_units

    names = describe_units(layout, ids)
    if not names:
        return "all parameters"
    return " ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "")


def _echo_edit_tail(result) -> None:
    """The closing line of intervene and fix-group: the model copy, and where the attempts went."""
    tail = (f"recorded {len(result.attempts)} attempts in the interventions table (run {result.run_id})"
            if result.recorded else "not recorded")
    click.echo(f"edits made on a copy of the model, restored after each attempt; the weights file is unchanged; {tail}")


def _record(d, records: list[dict], no_record: bool, wait: bool = False) -> str | None:
    from ..interventions import write_attempts

    return None if no_record else write_attempts(d.path, records, wait=wait)


def _check_recordable(db: str, no_record: bool) -> None:
    """Before any work: a read-only database cannot take the attempts (unless --no-record)."""
    import os

    if not no_record and os.path.isdir(db) and not os.access(db, os.W_OK):
        from ..errors import ReadOnlyError

        raise ReadOnlyError(f"database '{db}' is read-only and cannot record the attempts; pass --no-record")


def _method_option(choices):
    return click.option("--method", required=True, type=click.Choice(choices), help="Which intervention.")


def _device_option(fn):
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(fn)


@click.command()
@db_option
@click.option("--id", "sample_id", required=True, type=int, help="Id of the stored sample.")
@_method_option(("prune", "perturb", "finetune"))
@click.option("--top-k", default=10, show_default=True, type=int, help="Number of filters edited (the sample's top-k salient ones, and as many in each control).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="finetune: step size (the model's last learning rate).")
@click.option("--sigma", default=1e-3, show_default=True, type=float, help="perturb: standard deviation of the Gaussian noise added to each weight.")
@click.option("--neighbors", "n_neighbors", default=10, show_default=True, type=int, help="finetune: saliency neighbours scored under each step.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random control (and of the noise).")
@_device_option
@click.option("--no-record", is_flag=True, help="Do not append the attempts to the interventions table.")
@format_option
@wait_option
@handle_errors
def intervene(db, sample_id, method, top_k, lr, sigma, n_neighbors, seed, device, no_record, fmt, wait):
    """Prune, perturb or fine-tune a sample's salient filters (on a copy of the model) against random and least-salient filters."""
    from ..interventions import check_k, intervene as run, new_run_id, sample_records
    from ..query import open as open_db

    _check_recordable(db, no_record)
    with open_db(db) as d:
        d.sample(sample_id)  # an unknown id or a bad k fails before the model is loaded
        check_k(top_k, d.manifest.n_units)
        bench = _bench(d, device)
        result = run(bench, sample_id, method, top_k=top_k, lr=lr, sigma=sigma, seed=seed, n_neighbors=n_neighbors)
        result.run_id = new_run_id()
        result.recorded = _record(d, sample_records(result, run_id=result.run_id, weights_sha256=bench.weights_sha256),
                                  no_record, wait)
        layout = bench.layout
    if fmt != "table":
        emit(result, fmt)
    else:
        _print_intervention(result, layout, lr=lr, sigma=sigma)


def _print_intervention(result, layout, *, lr: float, sigma: float) -> None:
    """The table of ``intervene``: the sample, one row per attempt, a legend."""
    finetune = result.method == "finetune"
    rows = []
    for a in result.attempts:
        row = {"filters": a.filters, "k": a.k, "units": _units_cell(layout, a.unit_ids, 2), "d_true": a.delta_true_conf,
               "d_pred": a.delta_pred_conf, "p_true_after": a.true_conf_after, "pred_after": a.pred_name_after,
               "correct_after": a.correct_after}
        if finetune:
            row.update({"scale": a.grad_scale, "nb_fixed": f"{a.nb_corrected}/{a.nb_wrong_before}",
                        "nb_broken": a.nb_broken, "nb_d_true": a.nb_delta_true_conf})
        rows.append(row)
    s = result.sample
    what = {"prune": "weights zeroed, biases kept", "perturb": f"Gaussian noise, sigma {sigma:g}",
            "finetune": f"one SGD step of size {lr:g} on the sample's loss; controls rescaled to the salient gradient norm"}[result.method]
    click.echo(f"sample {s.sample_id} ({s.split}, {s.key}): label {s.label_name}, predicted {s.pred_name} "
               f"({'correct' if s.baseline_correct else 'wrong'}); p(true) {s.true_conf:.3f}, p(pred) {s.pred_conf:.3f}")
    emit_rows(rows, "table", title=f"{result.method} of {result.k} filters ({what})")
    legend = "d_true / d_pred: change in the confidence of the true class / of the original prediction"
    if finetune:
        legend += (f"; scale: gradient rescaling factor; nb_*: its {len(result.neighbors)} nearest saliency neighbours "
                   "(nb_fixed: misclassified ones now correct, nb_broken: correct ones now wrong)")
    click.echo(legend)
    _echo_edit_tail(result)


@click.command()
@db_option
@click.option("--split", required=True, help="The split whose samples are intervened on.")
@_method_option(("prune", "perturb", "finetune"))
@click.option("--ks", help="Comma-separated numbers of filters to edit (default: those of 1,5,10,25,50 that fit the model).")
@click.option("--limit", type=int, help="A seeded random subset of this many samples (default: all).")
@click.option("--correct", is_flag=True, help="Correctly classified samples instead of mistakes (appendix A.2).")
@click.option("--bootstrap", default=1000, show_default=True, type=int, help="Bootstrap resamples for the 95% intervals.")
@click.option("--out", type=click.Path(dir_okay=False), help="FILE.png: the figure (each metric against k, per filter choice).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="finetune: step size.")
@click.option("--sigma", default=1e-3, show_default=True, type=float, help="perturb: noise standard deviation.")
@click.option("--neighbors", "n_neighbors", default=10, show_default=True, type=int, help="finetune: saliency neighbours scored per sample.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@click.option("--random-draws", "random_draws", default=10, show_default=True, type=int,
              help="Independent seeded draws of the random control per sample and k; a sample's value is their mean.")
@_device_option
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@handle_errors
def validate(db, split, method, ks, limit, correct, bootstrap, out, lr, sigma, n_neighbors, seed, random_draws, device, fmt,
             quiet, as_of):
    """Do the salient filters matter? An intervention on every mistake of a split over a range of k, vs random and least-salient filters."""
    from ..explain import check_out_file
    from ..interventions import ValidationSettings, check_draws, parse_ks, validate as run, validate_figure
    from ..query import open as open_db

    check_draws(random_draws)
    if out is not None:
        check_out_file(out)
    with progress_bars(not quiet and fmt == "table") as progress:
        with open_db(db, as_of=as_of) as d:
            k_list = parse_ks(ks, d.manifest.n_units)
            d.ids_where(split=split)  # an unknown split fails before the model is loaded
            settings = ValidationSettings(ks=k_list, correct=correct, limit=limit, n_boot=bootstrap, seed=seed,
                                          random_draws=random_draws, lr=lr, sigma=sigma, n_neighbors=n_neighbors)
            result = run(_bench(d, device), split, method, settings, progress=progress)
    if out is not None:
        result.out = str(validate_figure(result, out))
    if fmt != "table":
        emit(result, fmt)
    else:
        _print_validation(result)


def _print_validation(result) -> None:
    """The table of ``validate``: each estimate with its interval, then the paired differences."""
    rows = []
    for r in result.table:
        row = {"k": "all" if r.k is None else r.k, "filters": r.filters, "n": r.delta_true_conf.n,
               "d_true_conf [95% CI]": _ci(r.delta_true_conf),
               ("corrected" if result.which == "misclassified" else "still correct") + " [95% CI]": _ci(r.correct_after, pct=True),
               "d_pred_conf [95% CI]": _ci(r.delta_pred_conf)}
        if result.method == "finetune":
            row.update({"nb corrected [95% CI]": _ci(r.nb_corrected_share, pct=True),
                        "nb d_true_conf [95% CI]": _ci(r.nb_delta_true_conf)})
        rows.append(row)
    extra = (f", step {result.lr:g}" if result.method == "finetune"
             else f", sigma {result.sigma:g}" if result.method == "perturb" else "")
    emit_rows(rows, "table", title=f"{result.method} on {result.samples} {result.which} samples of {result.split}{extra}; "
                                   f"{result.bootstrap} bootstrap resamples; random control: mean of "
                                   f"{result.random_draws} draw{'s' if result.random_draws != 1 else ''} per sample")
    for p in result.paired_delta_true_conf:
        click.echo(f"k={p.k}: d_true_conf salient - random {_ci(p.salient_minus_random)}, "
                   f"salient - least salient {_ci(p.salient_minus_least_salient)} (paired)")
    if result.baseline_mismatches:
        click.echo(f"note: {result.baseline_mismatches} samples are classified differently by the reloaded model than stored")
    if result.out is not None:
        click.echo(f"wrote {result.out}")


@click.command()
@db_option
@click.option("--split", help="Only samples of this split (default: all).")
@click.option("--limit", default=100, show_default=True, type=int, help="A seeded random subset of this many samples.")
@click.option("--eps", default="0.001,0.01,0.1", show_default=True, help="Comma-separated radii of the L2 ball around the conv weights.")
@click.option("--steps", default=10, show_default=True, type=int, help="Projected gradient steps.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@_device_option
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@handle_errors
def adversarial(db, split, limit, eps, steps, seed, device, fmt, quiet, as_of):
    """Adversarial parameter saliency (A.7): |theta* - theta0| per filter after a max/min-loss attack in an L2 ball, vs the plain profile."""
    from ..interventions import adversarial_agreement, parse_eps
    from ..query import open as open_db

    eps_list = parse_eps(eps)
    with progress_bars(not quiet and fmt == "table") as progress:
        with open_db(db, as_of=as_of) as d:
            if split is not None:
                d.ids_where(split=split)
            result = adversarial_agreement(_bench(d, device), split=split, limit=limit, eps=eps_list, steps=steps,
                                           seed=seed, progress=progress)
    if fmt == "json":
        emit(result, "json")
        return
    emit_rows(result.rows(), fmt, title=(
        f"adversarial vs plain parameter saliency, {result.samples} samples, {result.steps} projected gradient steps. "
        "*_raw: |theta*-theta0| per filter vs the stored raw profile; *_std: both standardised with the database's "
        "statistics (the adversarial profile first scaled by |grad L|/eps)") if fmt == "table" else None)


@click.command("fix-group")
@db_option
@click.option("--cluster", required=True, type=int, help="Error group (from `saliencydb clusters`).")
@_method_option(("prune", "finetune"))
@click.option("--top-k", default=10, show_default=True, type=int, help="Number of the group's most blamed filters edited.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="finetune: step size (on the summed loss of the group).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random control.")
@_device_option
@click.option("--no-record", is_flag=True, help="Do not append the attempts to the interventions table.")
@format_option
@wait_option
@handle_errors
def fix_group(db, cluster, method, top_k, lr, seed, device, no_record, fmt, wait):
    """Edit an error group's most blamed filters (and controls), re-score every cluster and the split: corrected, broken, net accuracy."""
    from ..interventions import check_k, fix_group as run, group_records, new_run_id
    from ..interventions.groups import group_members
    from ..query import open as open_db

    _check_recordable(db, no_record)
    with open_db(db) as d:
        group_members(d, cluster)  # an unknown cluster or a bad k fails before the model is loaded
        check_k(top_k, d.manifest.n_units)
        bench = _bench(d, device)
        result = run(bench, cluster, method, top_k=top_k, lr=lr, seed=seed)
        result.run_id = new_run_id()
        result.recorded = _record(d, group_records(result, run_id=result.run_id, weights_sha256=bench.weights_sha256),
                                  no_record, wait)
        layout = bench.layout
    if fmt != "table":
        emit(result, fmt)
    else:
        _print_group_fix(result, layout, lr=lr)


def _print_group_fix(result, layout, *, lr: float) -> None:
    """The tables of ``fix-group``: one row per attempt, then the mistakes per cluster."""
    rows = [{"filters": a.filters, "k": a.k, "units": _units_cell(layout, a.unit_ids, 4),
             "corrected_in_group": f"{a.corrected}/{a.group_wrong_before}", "broken_elsewhere": a.broken,
             "fixed_elsewhere": a.fixed_elsewhere, "accuracy_before": a.accuracy_before,
             "accuracy_after": a.accuracy_after, "net_accuracy_change": a.net_accuracy_change,
             "d_true_conf_group": a.delta_true_conf}
            for a in result.attempts]
    what = {"prune": "weights zeroed, biases kept",
            "finetune": f"one SGD step of size {lr:g} on the group's summed loss; controls rescaled to its gradient norm"}[result.method]
    emit_rows(rows, "table", title=f"fixing cluster {result.cluster} ({len(result.members)} samples) by {result.method} "
                                   f"of {result.k} filters ({what}); scored on {result.scored} samples of "
                                   f"{', '.join(result.splits)}")
    per_cluster = [{"cluster": c.cluster, "target": "*" if c.target else "", "size": c.size, "wrong before": c.wrong_before,
                    **{f"wrong after {a.filters}": c.wrong_after[a.filters] for a in result.attempts}}
                   for c in result.clusters]
    emit_rows(per_cluster, "table", title="mistakes per cluster before and after each attempt (* the target)")
    _echo_edit_tail(result)


COMMANDS = [intervene, validate, adversarial, fix_group]
