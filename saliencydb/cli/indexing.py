"""Commands that profile samples into a database: index, ingest, restat, demo."""

from __future__ import annotations

import sys

import click

from .output import db_option, handle_errors, progress_bars, wait_option


def hf_column_options(fn):
    """--image-column / --label-column / --text-column: added to an hf: data spec as ?image=COL&label=COL&text=COL."""
    fn = click.option("--text-column", help="hf: data only: the sentence column of a text dataset, when it is not "
                                            "called text, sentence or content; stored in the spec as ?text=COL.")(fn)
    fn = click.option("--label-column", help="hf: data only: the label column (a ClassLabel, integer or string column), "
                                             "when it is not the only ClassLabel column; stored in the spec as ?label=COL.")(fn)
    return click.option("--image-column", help="hf: data only: the image column, when the dataset has several Image "
                                               "columns; stored in the spec as ?image=COL.")(fn)


@click.command()
@db_option
@click.option("--model", "model_spec", help="Model spec: torchvision:NAME, timm:NAME (pip install 'saliencydb[timm]'), hf:DIR (a save_pretrained image classifier, sequence classifier or masked-LM, with its tokenizer; pip install 'saliencydb[hf]'), torchscript:PATH (or a bare TorchScript file path), python:MODULE:FACTORY or python:FILE.py:FACTORY. Needed to create a database.")
@click.option("--task", type=click.Choice(["image-classification", "sequence-classification", "masked-lm"]),
              help="hf: models only: the task (default: the one the config's architectures name). Text tasks read "
                   "jsonl:/csv: sentences, tokenized by the tokenizer saved in the model directory.")
@click.option("--weights", help="torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a local state-dict file.")
@click.option("--num-classes", type=int, help="Number of classes, when it cannot be read off the weights.")
@click.option("--transform", help="Input transform: imagenet, mnist, cifar or key=value list (mode=RGB,resize=256,crop=224,mean=a/b/c,std=a/b/c).")
@click.option("--data", "data_spec", required=True, help="Data spec: imagefolder:PATH, csv:PATH (path,label; or text,label for a text model), jsonl:PATH (text and label per line), torchvision:NAME:ROOT[:train|test], builtin:mnist5k[:train|val|all], builtin:sklearn-digits[:train|val|all], hf:PATH[:SPLIT] (a Hugging Face dataset: a save_to_disk folder or a cached name; pip install 'saliencydb[datasets]').")
@hf_column_options
@click.option("--split", default="val", show_default=True, help="Name of the split the samples go into.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Samples per batched forward/backward pass.")
@click.option("--limit", type=int, help="Profile at most this many samples of the split (a later run without it continues).")
@click.option("--workers", type=int, help="Image-decoding worker processes (default: none on 2 cores or fewer, else cores - 1, at most 8).")
@click.option("--index", "index_kind", type=click.Choice(["auto", "flat", "ivf", "ivfpq", "ivf-sq8"]),
              help="FAISS index kind: auto (the default for a new database; an existing one keeps its own): exact flat "
                   "while a flat index of the samples takes at most 8 GiB, else ivf-sq8 (8-bit codes, a quarter of flat, "
                   "its recall@10 against exact search measured and printed); flat (exact); ivf; ivfpq (compressed codes). "
                   "Too few samples to train an IVF kind: flat.")
@click.option("--commit-every", "part_rows", default=1024, show_default=True, type=int, help="Samples per committed Parquet part (the unit of resumption).")
@click.option("--aggregate", type=click.Choice(["mean_abs", "rms"]),
              help="Profile value per filter, chosen when the database is created: mean_abs, the paper's mean |dL/dw| "
                   "(default), or rms, an approximation that is faster at small feature maps (its measured agreement "
                   "and speed: docs/method.md, 'Approximate profiles').")
@click.option("--units", type=click.Choice(["auto", "conv", "linear", "all"]),
              help="Which weights are units, chosen when the database is created: conv filters, linear layers (and "
                   "attention projections), all, or auto (default): conv when the model has at least as many conv "
                   "layers as linear ones (CNNs), else linear (ViTs, MLPs).")
@click.option("--linear-units", type=click.Choice(["out", "in"]),
              help="A linear unit is an output feature, the row W[o, :] (out, default), or an input column W[:, j] (in).")
@click.option("--stats", "stats",
              help="reference:resnet50|vgg19|densenet121|inception_v3: standardise with the paper's published ImageNet "
                   "statistics of that torchvision model (checked filter by filter) instead of computing them here.")
@click.option("--normalisation", type=click.Choice(["zscore", "zscore-unitnorm", "zscore-dlogit"]),
              help="Chosen when the database is created (switch later with `restat --normalisation`). " + "Profile normalisation: zscore, the paper's per-filter z-score (default); zscore-unitnorm, each profile "
                   "divided by its L2 norm first; zscore-dlogit, divided by ||dL/dlogits|| first (docs/method.md, 'What the numbers mean').")
@click.option("--profile-dtype", type=click.Choice(["float32", "float16"]),
              help="How raw profiles are stored, chosen when the database is created: float32 (default), or float16 "
                   "scaled by a power of two per row (half the bytes; 2**-11 relative precision, docs/database-format.md). "
                   "The statistics are computed from the float32 profiles either way.")
@click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--random-weights", is_flag=True,
              help="Profile an untrained model on purpose: every weight drawn at random under --seed (nothing is "
                   "downloaded; the database re-draws the same weights when it reloads the model). Any spec but a "
                   "TorchScript file; not with --weights.")
@click.option("--seed", type=int, help="With --random-weights: the seed the weights are drawn under (default 0).")
@click.option("--classes", "classes", type=click.Path(dir_okay=False),
              help="A text file naming the model's classes, one per line in its class order; labels given as names "
                   "(folders, CSV) are matched to them.")
@handle_errors
def index(db, model_spec, task, weights, num_classes, transform, data_spec, image_column, label_column, text_column, split, device, batch_size, limit, workers, index_kind, part_rows,
          aggregate, units, linear_units, stats, normalisation, profile_dtype, wait, quiet, random_weights, seed, classes):
    """Profile every sample of a dataset into a database (creates it; resumes an interrupted run)."""
    from ..data.sources import with_hf_columns
    from ..indexer import Indexer, torchrun_job

    data_spec = with_hf_columns(data_spec, image_column, label_column, text_column)
    with torchrun_job() as rank, progress_bars(not quiet and rank == 0) as progress:
        report = Indexer(db, model=model_spec, task=task, weights=weights, transform=transform, num_classes=num_classes,
                         device=device, batch_size=batch_size, workers=workers, index_kind=index_kind, part_rows=part_rows,
                         aggregate=aggregate, units=units, linear_units=linear_units, stats=stats, normalisation=normalisation,
                         progress=progress, wait=wait,
                         random_weights=random_weights, seed=seed, classes=classes,
                         profile_dtype=profile_dtype).run(data_spec, split=split, limit=limit)
    _job_summary(report)


@click.command()
@db_option
@click.option("--data", "data_spec", required=True, help="Data spec of the new samples (as for `index`).")
@hf_column_options
@click.option("--split", required=True, help="Split the new samples go into (a new name, or an existing one to add to).")
@click.option("--replace", is_flag=True, help="Re-profile an existing split on purpose: the new profiles replace the old ones in one commit.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Samples per batched forward/backward pass.")
@click.option("--limit", type=int, help="Ingest at most this many samples of the source (a later run continues).")
@click.option("--workers", type=int, help="Image-decoding worker processes (default: none on 2 cores or fewer, else cores - 1, at most 8).")
@click.option("--commit-every", "part_rows", default=1024, show_default=True, type=int, help="Samples per committed Parquet part.")
@click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@handle_errors
def ingest(db, data_spec, image_column, label_column, text_column, split, replace, device, batch_size, limit, workers, part_rows, wait, quiet):
    """Add a new set to an existing database with its model and frozen statistics (idempotent, resumable)."""
    from ..data.sources import with_hf_columns
    from ..indexer import Indexer, torchrun_job

    data_spec = with_hf_columns(data_spec, image_column, label_column, text_column)
    with torchrun_job() as rank, progress_bars(not quiet and rank == 0) as progress:
        report = Indexer(db, device=device, batch_size=batch_size, workers=workers, part_rows=part_rows,
                         progress=progress, wait=wait).run(data_spec, split=split, limit=limit, command="ingest",
                                                           replace=replace, require_existing=True)
    _job_summary(report)


def _job_summary(report) -> None:
    if report is None:  # a torchrun rank other than 0: rank 0 reports for the job
        return
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for note in getattr(report, "index_notes", []):
        click.echo(f"index: {note}")
    acc = (f", split accuracy {report.split_accuracy:.2%} over its {report.split_samples} samples"
           if report.split_accuracy is not None else "")
    click.echo(f"{report.split}: {report.added} samples added, {report.skipped} already there, {report.failed} failed{acc} "
               f"({report.seconds:.1f}s)")
    for key, reason in report.failures[:20]:
        click.echo(f"  failed: {key}: {reason}", err=True)
    if len(report.failures) > 20:
        click.echo(f"  ... and {len(report.failures) - 20} more: saliencydb sql --db DB \"SELECT * FROM failures\"", err=True)
    if report.failed:
        sys.exit(2)


@click.command()
@db_option
@click.option("--splits", help="Comma-separated splits to compute the statistics over (default: all).")
@click.option("--normalisation", type=click.Choice(["zscore", "zscore-unitnorm", "zscore-dlogit"]),
              help="Switch the database to this normalisation (default: keep its own). " + "Profile normalisation: zscore, the paper's per-filter z-score (default); zscore-unitnorm, each profile "
                   "divided by its L2 norm first; zscore-dlogit, divided by ||dL/dlogits|| first (docs/method.md, 'What the numbers mean').")
@click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@handle_errors
def restat(db, splits, normalisation, wait, quiet):
    """Recompute the standardisation statistics and rebuild the indexes, atomically (from the stored profiles: in a
    float16 database, the rounded values)."""
    from ..indexer import restat as do_restat

    with progress_bars(not quiet) as progress:
        result = do_restat(db, splits or None, normalisation=normalisation, progress=progress, wait=wait)
    click.echo(f"{result.normalisation} statistics over {', '.join(result.splits)} ({result.count} samples), frozen; indexes rebuilt "
               f"({', '.join(f'{k}: {v}' for k, v in result.indexes.items())}); knn, clusters and triage tables dropped")


@click.command()
@click.option("--db", type=click.Path(file_okay=False), help="Where to build the demo database (default demo-db, or demo-vit-db for --model vit; an existing demo database is brought up to date; any other is refused).")
@click.option("--model", "model", type=click.Choice(["cnn", "vit"]), default="cnn", show_default=True,
              help="The demo's small CNN (conv filters), or its small vision transformer (linear units).")
@click.option("--train", is_flag=True,
              help="Train the model on this machine's CPU with the demo's recipe instead of using the weights shipped "
                   "with saliencydb (training rounds differently on other CPUs, so the numbers may differ from the README's).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="With --train: where the trained model is cached (default ~/.cache/saliencydb).")
@click.option("--n-clusters", default=8, show_default=True, type=int, help="Number of error groups (k-means clusters).")
@click.option("--no-report", is_flag=True, help="Skip the HTML report.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@wait_option
@handle_errors
def demo(db, model, train, cache_dir, n_clusters, no_report, quiet, wait):
    """Index 2,000 held-out digits with a small CNN (or ViT) trained on built-in real digits, and show what the database finds."""
    from pathlib import Path

    from ..demo import run_demo, story

    with progress_bars(not quiet) as progress:
        result = run_demo(db or ("demo-db" if model == "cnn" else f"demo-{model}-db"),
                          cache_dir=Path(cache_dir) if cache_dir else None, n_clusters=n_clusters,
                          progress=progress, report=not no_report, wait=wait, model=model, train=train)
    click.echo(story(result))


COMMANDS = [index, ingest, restat, demo]
