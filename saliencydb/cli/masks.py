"""The command that exports a selection of units as a boolean mask per weight tensor: mask."""

from __future__ import annotations

import click

from .output import as_of_option, db_option, emit, emit_rows, format_option, handle_errors


@click.command()
@db_option
@click.option("--id", "sample_id", type=int, help="A stored sample: its top-k units (standardised profile).")
@click.option("--cluster", type=int, help="An error group (from `saliencydb clusters`): the top-k of its mean standardised profile.")
@click.option("--run", help="--cluster: the clusters run whose blame table is read (default: the one the database holds).")
@click.option("--top-k", required=True, type=int, help="Number of units selected.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="FILE.safetensors: one torch.bool tensor per unit weight of the model, True on the selected units.")
@format_option
@as_of_option
@handle_errors
def mask(db, sample_id, cluster, run, top_k, out, fmt, as_of):
    """Export a sample's (or an error group's) top-k units as a boolean mask per weight tensor (safetensors), for methods that edit only those weights."""
    from ..interventions import write_mask
    from ..query import open as open_db

    with open_db(db, as_of=as_of) as d:
        result = write_mask(d, sample_id=sample_id, cluster=cluster, run=run, top_k=top_k, out=out)
    if fmt != "table":
        emit(result, fmt)
        return
    rows = [{"rank": u.rank, "unit_id": u.unit_id, "layer": u.layer, "channel": u.channel, "z": u.z} for u in result.units]
    what = f"sample {result.sample_id}" if result.sample_id is not None else f"cluster {result.cluster} ({result.run})"
    emit_rows(rows, "table", title=f"top {result.k} {result.unit_kind} units of {what}, commit {result.commit}")
    click.echo(f"wrote {result.out}: {len(result.units)} of {result.n_units} units ({result.masked_weights} weights) "
               f"masked in {result.masked_tensors} tensors")


COMMANDS = [mask]
