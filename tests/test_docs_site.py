"""The documentation site (mkdocs.yml, docs/) as a tested document.

(a) it builds with MkDocs in strict mode, where any warning fails the build (a broken link or anchor, a page left
out of the nav, a ``:::`` reference the API reference cannot resolve); (b) its CLI reference, generated from the
click commands, lists every command and every option that ``saliencydb --help`` and ``saliencydb CMD --help``
show; (c) every page's blocks run as the README's do (tests/helpers.py: commands run as printed, outputs compared
with the real ones, everything else marked as an illustration saying why), the pages in the nav's order, on one
copy of the demo's database.
"""

import html
import os
import re
import subprocess
import sys

import click
import pytest

from helpers import (DOCS, ROOT, check_block_markers, check_make_targets, demo_workspace, run_blocks, run_cli,
                     site_pages)
from saliencydb.cli import cli

REFERENCE = DOCS / "reference" / "cli.md"
HAND_WRITTEN = [p for p in site_pages() if p.parent == DOCS]  # the pages people wrote (reference/ is generated)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built by `mkdocs build --strict` into a temporary folder; (the build's output, the folder)."""
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    return res, out


def test_the_site_builds_with_warnings_as_errors(site):
    res, out = site
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING" not in res.stderr, res.stderr
    for page in site_pages():
        assert (out / page.relative_to(DOCS).with_suffix(".html")).is_file(), page


def test_a_broken_link_fails_the_build(tmp_path):
    """Strict mode is what catches a broken link: the same build with one page linking nowhere fails."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [nowhere](nowhere.md) and [here](#no-such-anchor).\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"(?ms)^nav:.*?(?=^\S)", "nav:\n  - Home: index.md\n", config)
    config = re.sub(r"(?ms)^plugins:.*", "plugins:\n  - search\n", config)
    (tmp_path / "mkdocs.yml").write_text(config)
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "out")],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode != 0
    assert "nowhere.md" in res.stderr and "no-such-anchor" in res.stderr, res.stderr


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    """Every command of the CLI as (path, command), groups' subcommands included, as `--help` lists them."""
    ctx = click.Context(group, info_name="saliencydb")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command.hidden:
            continue
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))


def _sections(page: str) -> dict[str, str]:
    """The rendered CLI reference cut at its headings: {heading text: the text under it}."""
    parts = re.split(r"<h[1-6][^>]*>(.*?)</h[1-6]>", page, flags=re.S)
    text = lambda s: html.unescape(re.sub(r"<[^>]+>", "", s)).replace("¶", "").strip()
    return {text(parts[i]): text(parts[i + 1]) for i in range(1, len(parts) - 1, 2)}


def _help_options(help_text: str) -> set[str]:
    """The option names a --help text shows: the names at the start of each entry of its Options section."""
    section = help_text.split("\nOptions:\n", 1)[1].split("\nCommands:\n", 1)[0]
    names = set()
    for line in section.splitlines():
        entry = re.match(r"^  (-\S.*?)(?:  |$)", line)  # an entry starts two spaces in; its help text follows
        if entry:
            names.update(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", entry.group(1)))
    return names


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_the_cli_reference_lists_every_command_and_option(site):
    res, out = site
    assert res.returncode == 0, res.stderr
    sections = _sections((out / "reference" / "cli.html").read_text())
    top = run_cli("--help").output
    listed = re.findall(r"^  (\S+)", top.split("\nCommands:\n", 1)[1], re.M)
    assert listed and set(listed) <= {path[0] for path, _ in _commands(cli)}
    checked = 0
    for path, command in _commands(cli):
        title = " ".join(("saliencydb",) + path)
        assert title in sections, f"{title} is not in the CLI reference"
        shown = _help_options(run_cli(*path, "--help").output)
        from_click = {o for p in command.get_params(click.Context(command)) if isinstance(p, click.Option) and not p.hidden
                      for o in p.opts + p.secondary_opts}
        assert shown == from_click, (title, shown ^ from_click)  # the help text and click agree on the options
        missing = sorted(o for o in shown if not _mentions(sections[title], o))
        assert not missing, f"{title}: options missing from the CLI reference: {missing}"
        checked += 1
    assert checked >= len(listed) >= 20
    missing = sorted(o for o in _help_options(top) if not _mentions(sections["saliencydb"], o))
    assert not missing, f"saliencydb: options missing from the CLI reference: {missing}"


def test_every_command_is_documented_in_the_pages():
    """Every command is in the command-line tour's table and shown in use (`saliencydb NAME`) on some page."""
    tour = (DOCS / "cli.md").read_text()
    pages = "\n".join(p.read_text() for p in HAND_WRITTEN)
    for name in cli.commands:
        assert f"| `{name}` |" in tour and f"saliencydb {name}" in pages, name


def test_make_targets_on_the_pages_exist():
    for page in site_pages():
        check_make_targets(page.read_text(), str(page.relative_to(ROOT)))


def test_every_block_is_run_compared_or_marked_as_an_illustration():
    outputs = 0
    for page in site_pages():
        outputs += check_block_markers(page.read_text(), str(page.relative_to(ROOT)))[0]
    assert outputs >= 9, outputs  # the demo, neighbors, mistakes, five SQL answers, the ViT demo


def test_site_runs_as_printed(tmp_path_factory, tmp_path, monkeypatch):
    demo_output = demo_workspace(tmp_path_factory, tmp_path, monkeypatch)
    ran, differences = {"console": 0, "sql": 0, "python": 0, "output": 0}, []
    for page in site_pages():  # in the nav's order: a page may use what the pages before it made
        differences += run_blocks(page.read_text(), str(page.relative_to(ROOT)), demo_output, ran)[1]
    assert not differences, "\n\n".join(differences)
    assert ran["console"] >= 15 and ran["sql"] >= 5 and ran["python"] >= 4 and ran["output"] >= 9, ran
    # neither demo (CNN, ViT) trained its model: only the seed sweep's sklearn-digits models are in the cache
    assert not list((tmp_path / "cache" / "saliencydb").glob("mnist5k-*")), list((tmp_path / "cache").rglob("*.pt"))
