"""The ``saliencydb`` command line: a thin layer that parses flags, calls the library and formats
the answer (docs/architecture.md). ``output`` holds what every command shares; each other
module holds one family of commands."""

from __future__ import annotations

import click

from . import evidence, explaining, exports, indexing, interventions, masks, queries, serving, versions

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="saliencydb")
@click.pass_context
def cli(ctx):
    """saliencydb: a database of parameter-space saliency profiles.

    Index a dataset once, then ask which samples break the same filters of your
    model, and whether they make the same mistakes.
    """
    from ..memory import keep_freed_memory

    if ctx.invoked_subcommand not in LONG_RUNNING:  # a batch job: its memory stays at its peak until it exits
        keep_freed_memory()  # reuse freed activation buffers instead of paging them in again each batch


LONG_RUNNING = ("serve",)  # commands that run until stopped: freed memory goes back to the system


for _module in (indexing, queries, versions, explaining, interventions, masks, exports, serving, evidence):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="saliencydb")
