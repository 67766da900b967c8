"""Commands that read a database (and store the derived tables they compute): info, sql, neighbors, mistakes, clusters, triage."""

from __future__ import annotations


import click

from .output import (as_of_option, db_option, emit, emit_rows, format_option, handle_errors, normalisation_option, notes,
                     progress_bars, pylist, wait_option)

TINY_PER_GROUP = 3  # fewer samples than this per cluster (or per neighbour asked for): a warning, not a silent answer


def _derived(db: str, as_of: int | None, no_store: bool, wait: bool, operation: str, compute,
             normalisation: str | None = None):
    """Run a command that computes a derived table: ``compute(d, writer)``. The writer lock is
    taken before the version is read (so the result is stored on the version it was computed
    from, and a busy database is refused before any work); on a read-only database, with
    --no-store, --as-of or a --normalisation that is not the database's own, the result is
    computed and printed and nothing is stored."""
    from ..errors import ReadOnlyError
    from ..query import open as open_db
    from ..storage.derived import DerivedWriter

    if no_store or as_of is not None:
        with open_db(db, as_of=as_of, normalisation=normalisation) as d:
            return compute(d, None), "nothing was stored (" + ("--no-store" if no_store else f"--as-of {as_of}") + ")"
    if normalisation is not None:
        with open_db(db, normalisation=normalisation) as d:
            if d.overridden:
                return compute(d, None), (f"nothing was stored (--normalisation {normalisation}; the database's own is "
                                          f"{d.manifest.profile_normalisation}, switch it with `saliencydb restat`)")
    try:
        writer = DerivedWriter(db, wait=wait, operation=operation)
    except ReadOnlyError:
        with open_db(db) as d:
            return compute(d, None), f"database '{db}' is read-only: the results are printed, nothing was stored"
    with writer:
        with open_db(db) as d:
            return compute(d, writer), None


def _transform_spec(t: dict) -> str:
    """An image transform record as the key=value text ``--transform`` takes (``Transform.to_spec``, without
    importing torch: `info` starts fast)."""
    parts = [f"{key}={t[key]}" for key in ("resize", "crop", "size") if t.get(key) is not None]
    parts += [f"mode={t['mode']}", "mean=" + "/".join(map(repr, map(float, t["mean"]))),
              "std=" + "/".join(map(repr, map(float, t["std"])))]
    return ",".join(parts + ([f"interpolation={t['interpolation']}"] if t.get("interpolation", "bilinear") != "bilinear" else []))


@click.command()
@db_option
@as_of_option
@format_option
@handle_errors
def info(db, as_of, fmt):
    """Summarise a database: model, units, splits, accuracy, index state, versions."""
    from ..query import open as open_db

    with open_db(db, as_of=as_of) as d:
        s = d.info()
    if fmt != "table":
        emit(s, fmt)
        return
    rows = s.rows()
    for r in rows:  # a percentage, as `index` and `ingest` print it (JSON and CSV keep the fraction)
        r["accuracy"] = None if r["accuracy"] is None else f"{r['accuracy']:.2%}"
    behind = f"; the latest is {s.latest_commit}" if s.latest_commit not in (None, s.commit) else ""
    click.echo(f"database   {s.path} (format {s.format_version}, commit {s.commit}{behind}, {s.versions} versions kept)")
    weights = s.model.weights or (f"random (seed {s.model.random_seed})" if s.model.random_seed is not None else "-")
    click.echo(f"model      {s.model.spec}  weights {weights}  sha256 {s.model.weights_sha256[:12]}  "
               f"classes {s.model.num_classes}")
    if s.model.transform.get("kind") == "tokens":  # a text database (data.text)
        t = s.model.transform
        click.echo(f"data       text: {t['task']} sentences, tokenized by {t['tokenizer']} (up to {t['max_length']} tokens)")
    else:
        source = f" ({s.model.transform_source})" if s.model.transform_source else ""
        click.echo(f"transform  {_transform_spec(s.model.transform)}{source}")
    features = f"features {s.feature_dim}" if s.feature_dim else "no feature vectors (a TorchScript model takes no hooks)"
    click.echo(f"units      {s.units.count} {s.units.kind} units in {s.units.layers} layers "
               f"({s.units.aggregate} of dL/dw); {features}")
    if s.units.profile_dtype is not None:  # float32 databases print no such line, as before the option
        click.echo(f"profiles   stored as {s.units.profile_dtype} scaled per row, {s.units.profile_bytes} bytes per sample "
                   f"(float32: {4 * s.units.count})")
    if s.units.excluded:
        click.echo(f"not units  {len(s.units.excluded)} weights: " + "; ".join(s.units.excluded[:6])
                   + (f"; +{len(s.units.excluded) - 6} more" if len(s.units.excluded) > 6 else ""))
    st = s.statistics
    click.echo("statistics " + ("none yet" if st is None else f"{st.source}: the reference implementation's ImageNet statistics"
                                if st.source else f"over {', '.join(st.splits)} ({st.count} samples)"
                                + (", frozen" if st.frozen else "")
                                + ("" if st.normalisation == "zscore" else f"; {st.normalisation} profiles")))
    idx = ", ".join(f"{k}: {v.kind} {v.ntotal}" + (" (stale)" if v.stale else "") for k, v in s.indexes.items())
    click.echo(f"indexes    {idx or 'none'}")
    for k, v in s.indexes.items():  # an approximate index says so, with its measured recall (an exact one: no line)
        if v.approximate:
            click.echo(f"           {k} index: {v.description}")
    derived = ", ".join(f"{k} (commit {v.base_commit}" + (", stale" if v.stale else "") + ")" for k, v in s.derived.items())
    click.echo(f"derived    {derived or 'none'}")
    emit_rows(rows, "table")
    stale = [k for k, v in s.derived.items() if v.stale]
    if stale:
        notes([f"note: {', '.join(stale)} were computed from other samples or statistics than this version's; "
                "rerun `saliencydb mistakes` / `clusters` / `triage` to refresh them"])


@click.command()
@db_option
@click.argument("query")
@as_of_option
@format_option
@handle_errors
def sql(db, query, as_of, fmt):
    """Run one read-only SQL query (DuckDB) over the database.

    \b
    Tables: samples, units, knn, clusters, blame, triage, failures, ingests, interventions.
    Views: classes, zscores, salient_units.
    Macros: profile(id), top_units(id, k).
    Columns: docs/database-format.md. The query cannot write or read files."""
    from ..query import open as open_db

    with open_db(db, as_of=as_of) as d:
        table = d.sql(query)
        notes(d.notices(query))
    rows = pylist(table)
    emit_rows(rows, fmt)


@click.command()
@db_option
@click.option("--id", "sample_id", type=int, help="Id of a stored sample.")
@click.option("--image", type=click.Path(dir_okay=False), help="A new image file (profiled with the stored model, not stored).")
@click.option("--text", "text", help="A new sentence, for a text database (profiled with the stored model, not stored).")
@click.option("--label", help="True label of --image or --text: a class index or name (a masked-LM's target word).")
@click.option("-k", default=10, show_default=True, type=int, help="Number of neighbours.")
@click.option("--space", type=click.Choice(["saliency", "feature"]), default="saliency", show_default=True,
              help="Search by saliency profile, or by the penultimate-layer features (the baseline).")
@click.option("--where", help="SQL predicate over samples restricting the candidates before the search, e.g. \"NOT correct\".")
@click.option("--split", help="Only neighbours from this split.")
@normalisation_option
@as_of_option
@format_option
@handle_errors
def neighbors(db, sample_id, image, text, label, k, space, where, split, normalisation, as_of, fmt):
    """Nearest neighbours of a sample by saliency profile (or feature), with their labels and predictions."""
    from ..query import open as open_db

    with open_db(db, as_of=as_of, normalisation=normalisation) as d:
        result = d.neighbors(sample_id, k=k, space=space, where=where, split=split, image=image, label=label, text=text)
    if result.note:
        notes([f"note: {result.note}"])
    if fmt != "table":
        emit(result, fmt)
        return
    q = result.query
    who = f"sample {q.sample_id}" if q.sample_id is not None else "new sentence" if q.text is not None else f"image {q.key}"
    who += f" \"{q.text}\"" if q.text is not None else ""
    click.echo(f"{who}: label {q.label_name}, predicted {q.pred_name} "
               f"({'correct' if q.correct else 'wrong'}, confidence {q.pred_conf:.2f}); {space} space")
    emit_rows(result.rows(), "table")
    s = result.summary
    line = (f"{s.share_misclassified:.0%} of the {s.neighbors} neighbours are misclassified, "
            f"{s.share_same_prediction:.0%} share the prediction '{q.pred_name}'")
    if s.share_same_confusion is not None:
        line += f", {s.share_same_confusion:.0%} make the same mistake ({q.label_name} -> {q.pred_name})"
    click.echo(line)


@click.command()
@db_option
@click.option("-k", default=10, show_default=True, type=int, help="Neighbours per sample.")
@click.option("--bootstrap", default=1000, show_default=True, type=int, help="Bootstrap resamples for the 95% intervals.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@click.option("--no-store", is_flag=True, help="Print the report without storing the neighbour graph (knn table).")
@normalisation_option
@as_of_option
@wait_option
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@handle_errors
def mistakes(db, k, bootstrap, seed, no_store, normalisation, as_of, wait, fmt, quiet):
    """Do saliency neighbours share mistakes? Per split, saliency vs feature space; stores the knn table."""
    with progress_bars(not quiet and fmt == "table") as progress:
        report, note = _derived(db, as_of, no_store, wait, f"mistakes -k {k}",
                                lambda d, w: d.mistakes(k, n_boot=bootstrap, seed=seed, progress=progress,
                                                        write=w is not None, store=w), normalisation)
    if report.reused:
        note = (f"the stored neighbour graph (knn table, computed at commit {report.base_commit}) is this version's "
                f"for -k {k}: read, not searched again; nothing was stored")
    notes([f"note: {n}" for n in (note, report.note) if n])
    for name, e in report.splits.items():
        if e.samples < TINY_PER_GROUP * k:
            notes([f"warning: split '{name}' has {e.samples} samples for k={k} neighbours each; "
                    "the neighbourhoods cover much of the split and the shares say little (lower -k)"])
    if fmt != "table":
        emit(report, fmt)
        return
    rows = report.rows()
    for r in rows:
        for c in ("correct_neighbors", "ci95_low", "ci95_high", "same_confusion"):
            r[c] = None if r[c] is None else f"{r[c]:.1%}"
    emit_rows(rows, "table", title=f"share of correctly classified samples among the {k} nearest neighbours"
                                   + ("" if report.normalisation == "zscore" else f" ({report.normalisation} profiles)"))
    for split, e in report.splits.items():
        if "feature" in e.spaces and e.incorrect:
            sal = 1 - e.spaces["saliency"].correct_neighbors_of_incorrect.mean
            feat = 1 - e.spaces["feature"].correct_neighbors_of_incorrect.mean
            ratio = f"{sal / feat:.1f}x" if feat > 0 else "infinitely"
            click.echo(f"{split}: neighbours of a mistake are mistakes {sal:.0%} of the time in saliency space, "
                       f"{feat:.0%} in feature space ({ratio} as often)")
        if e.incorrect and e.baselines:
            click.echo(f"{split}: {_baseline_line(e)}")


def _baseline_line(e) -> str:
    """What saliency adds beyond neighbours chosen without it: the same-confusion share above all."""
    def pct(stat):
        return "-" if stat.mean is None else f"{stat.mean:.1%}"

    found = {**e.spaces, **{f"{name}-matched" if name != "random" else name: s for name, s in e.baselines.items()}}
    same = ", ".join(f"{name} {pct(s.same_confusion_of_incorrect)}" for name, s in found.items())
    wrong = ", ".join(f"{name} {'-' if s.correct_neighbors_of_incorrect.mean is None else f'{1 - s.correct_neighbors_of_incorrect.mean:.0%}'}"
                      for name, s in found.items())
    return f"a mistake's neighbours make its exact confusion: {same}; are mistakes: {wrong}"


@click.command()
@db_option
@click.option("--n-clusters", default=8, show_default=True, type=int, help="Number of error groups (k-means clusters).")
@click.option("--errors-only/--all", default=True, show_default=True, help="Cluster misclassified samples only, or all.")
@click.option("--split", help="Only samples of this split.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@click.option("--no-store", is_flag=True, help="Print the groups without storing the clusters and blame tables.")
@normalisation_option
@as_of_option
@wait_option
@format_option
@handle_errors
def clusters(db, n_clusters, errors_only, split, seed, no_store, normalisation, as_of, wait, fmt):
    """Group mistakes by saliency profile (k-means); stores the clusters and blame tables."""
    result, note = _derived(db, as_of, no_store, wait, f"clusters -n {n_clusters}",
                            lambda d, w: d.clusters(n_clusters, errors_only=errors_only, split=split, seed=seed,
                                                    write=w is not None, store=w), normalisation)
    if result.reused:
        note = (f"the stored error groups (computed at commit {result.base_commit}) are this version's for {result.run}: "
                "read, not clustered again; nothing was stored")
    if note:
        notes([f"note: {note}"])
    if result.samples < TINY_PER_GROUP * n_clusters:
        notes([f"warning: {result.samples} samples in {n_clusters} clusters is fewer than {TINY_PER_GROUP} per group; "
                "the groups say little (lower --n-clusters)"])
    if fmt != "table":
        emit(result, fmt)
        return
    emit_rows(result.rows(), fmt, title=f"{result.samples} samples in {result.n_clusters} clusters ({result.run})")


@click.command()
@db_option
@click.option("--split", required=True, help="The newly ingested split to triage.")
@click.option("--no-store", is_flag=True, help="Print the triage without storing it in the triage table.")
@as_of_option
@wait_option
@format_option
@handle_errors
def triage(db, split, no_store, as_of, wait, fmt):
    """Assign a new split's mistakes to known error groups (or mark them new) and show which layers moved."""
    result, note = _derived(db, as_of, no_store, wait, f"triage {split}",
                            lambda d, w: d.triage(split, write=w is not None, store=w))
    if note:
        notes([f"note: {note}"])
    if fmt != "table":
        emit(result, fmt)
        return
    click.echo(f"{result.new_mistakes} new mistakes in '{split}' against the error groups of {result.run} "
               f"(built on {', '.join(result.groups_built_on)})")
    emit_rows(result.rows(), "table")
    if result.layer_drift:
        click.echo(f"layers whose mean standardised saliency moved most (vs {', '.join(result.reference_splits)}):")
        emit_rows([d.to_dict() for d in result.layer_drift], "table")


COMMANDS = [info, sql, neighbors, mistakes, clusters, triage]
