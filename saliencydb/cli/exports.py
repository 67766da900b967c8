"""Commands that export a database to other tools: export fiftyone."""

from __future__ import annotations

import click

from .output import as_of_option, db_option, emit, format_option, handle_errors


@click.group()
def export():
    """Export a database to another tool (FiftyOne)."""


@export.command("fiftyone")
@db_option
@click.option("--name", required=True, help="Name of the FiftyOne dataset to create (persistent).")
@click.option("--split", help="Only this split (default: every split).")
@click.option("--media-dir", type=click.Path(file_okay=False),
              help="Where images held in memory (built-in digits, Hugging Face datasets, torchvision) are written as PNG "
                   "files for FiftyOne to show; image folders and CSVs keep their own files.")
@click.option("--overwrite", is_flag=True, help="Replace a FiftyOne dataset of that name.")
@click.option("--no-similarity", is_flag=True, help="Do not build the brain similarity index on the saliency embedding.")
@click.option("--no-visualization", is_flag=True, help="Do not compute the 2-D visualization of the profiles (UMAP if installed, else PCA).")
@format_option
@as_of_option
@handle_errors
def fiftyone(db, name, split, media_dir, overwrite, no_similarity, no_visualization, fmt, as_of):
    """A FiftyOne dataset of the database's samples: images, labels, predictions, saliency and feature embeddings,
    error groups and triage as fields and tags, and a similarity index whose neighbours are the saliency neighbours."""
    from ..export import to_fiftyone
    from ..query import open as open_db

    with open_db(db, as_of=as_of) as d:
        result = to_fiftyone(d, name, split=split, media_dir=media_dir, overwrite=overwrite,
                             similarity=not no_similarity, visualization=not no_visualization)
    if fmt != "table":
        emit(result, fmt)
        return
    brain = ", ".join(k for k in (result.similarity_key, result.visualization_key) if k) or "none"
    click.echo(f"FiftyOne dataset '{result.name}': {result.samples} samples of {', '.join(result.splits)} (commit {result.commit}); "
               f"brain runs: {brain}" + (f" ({result.visualization_method})" if result.visualization_method else ""))
    if result.media_dir:
        click.echo(f"images decoded from memory were written to {result.media_dir}")
    for embedding, why in result.absent.items():
        click.echo(f"no {embedding} embedding: the database has no {embedding} vectors ({why})")
    click.echo(f"open it: python -c \"import fiftyone as fo; fo.launch_app(fo.load_dataset('{result.name}')).wait()\"")


COMMANDS = [export]
