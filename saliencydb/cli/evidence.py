"""Commands that weigh the evidence across models: seed-sweep."""

from __future__ import annotations

import click

from .output import ci_text, emit, emit_rows, format_option, handle_errors, progress_bars


@click.command("seed-sweep")
@click.option("--data", required=True, help="A builtin validation split, e.g. builtin:mnist5k:val (the model trains on its :train).")
@click.option("--seeds", required=True, help="Comma-separated model seeds, e.g. 0,1,2 (one trained model each).")
@click.option("--method", required=True, type=click.Choice(("prune", "perturb", "finetune")), help="Which intervention.")
@click.option("--ks", help="Comma-separated numbers of filters to edit (default: those of 1,5,10,25,50 that fit the model).")
@click.option("--limit", type=int, help="A seeded random subset of this many mistakes per model (default: all).")
@click.option("--bootstrap", default=1000, show_default=True, type=int, help="Bootstrap resamples for the 95% intervals.")
@click.option("--random-draws", "random_draws", default=10, show_default=True, type=int,
              help="Independent seeded draws of the random control per sample and k; a sample's value is their mean.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the validation (sample subsets, random controls, bootstrap).")
@click.option("--cache-dir", "cache_dir", type=click.Path(file_okay=False),
              help="Where the trained models and their databases are kept (default: the demo's cache directory).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--epochs", type=int, hidden=True, help="Training epochs (default: the demo recipe's).")
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@handle_errors
def seed_sweep(data, seeds, method, ks, limit, bootstrap, random_draws, seed, cache_dir, device, epochs, fmt, quiet):
    """Does the salient-vs-random effect hold across models? Train the built-in CNN with each seed (cached), index
    the validation split, and run validate's paired salient - random difference on each model's mistakes."""
    from pathlib import Path

    from ..interventions import ValidationSettings, parse_ks
    from ..seeds import SweepSettings, builtin_split, demo_units, parse_seeds, seed_sweep as run

    builtin_split(data)
    seed_list = parse_seeds(seeds)
    k_list = parse_ks(ks, demo_units())
    validation = ValidationSettings(ks=k_list, limit=limit, n_boot=bootstrap, seed=seed, random_draws=random_draws)
    with progress_bars(not quiet and fmt == "table") as progress:
        result = run(data, seed_list, method, SweepSettings(validation=validation, epochs=epochs,
                                                            cache_dir=Path(cache_dir) if cache_dir else None,
                                                            device=device, progress=progress))
    if fmt != "table":
        emit(result, fmt)
    else:
        _print_sweep(result)


def _print_sweep(result) -> None:
    """One row per (model seed, k), then the signs of the intervals across seeds per k."""
    rows = [{"model seed": r.model_seed, "k": p.k, "accuracy": f"{r.accuracy:.1%}" if r.accuracy is not None else None,
             "mistakes": r.mistakes, "validated": r.validated,
             "d_true_conf salient - random [95% CI]": ci_text(p.salient_minus_random)}
            for r in result.runs for p in r.paired_delta_true_conf]
    emit_rows(rows, "table", title=f"{result.method} on the mistakes of {result.data}, model trained with each seed "
                                   f"({result.epochs} epochs); paired over samples, {result.bootstrap} bootstrap "
                                   f"resamples; random control: mean of {result.random_draws} draws per sample")
    for s in result.summary:
        mean = "n/a" if s.mean is None else f"{s.mean:+.3f}"
        click.echo(f"k={s.k}: salient - random interval above 0 in {s.above_zero} of {s.seeds} seeds, contains 0 in "
                   f"{s.contains_zero}, below 0 in {s.below_zero}; mean over seeds {mean}")


COMMANDS = [seed_sweep]
