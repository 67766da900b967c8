"""The README as a tested document: every command in it runs as printed (on a fresh copy of the demo database),
every output block in it is the real output of its command, and it leads to every page of the site.

The README is the front door; the manual is the site in docs/ (tests/test_docs_site.py runs its pages the same
way). The block markers and what is normalised before an output is compared are described in tests/helpers.py:

    <!-- readme-test: output: saliencydb ARGS -->   the block is exactly the standard output of that command
    <!-- readme-test: output of the SQL above -->    the block is exactly the output of the sql block before it
    <!-- readme-test: illustration (WHY) -->         not run, and WHY says why
    <!-- readme-test: expect-error (WHY) -->         a console block whose commands fail in one line
"""

import re
import shlex

from helpers import (DOCS, ROOT, check_block_markers, check_make_targets, demo_workspace, doc_blocks, normalised,
                     run_blocks, run_cli, site_pages)

README = (ROOT / "README.md").read_text()


def blocks():
    return doc_blocks(README)


def test_the_readme_leads_to_every_page_of_the_site():
    links = set(re.findall(r"\]\((docs/[\w./-]+\.md)(?:#[\w-]+)?\)", README))
    for page in site_pages():
        assert f"docs/{page.relative_to(DOCS).as_posix()}" in links, page
    for link in links:
        assert (ROOT / link).is_file(), link
    assert "mkdocs serve" in README


def test_make_targets_in_the_readme_exist():
    check_make_targets(README, "README.md")
    makefile = (ROOT / "Makefile").read_text()
    assert "saliencydb demo" in makefile and "pytest" in makefile


def test_every_block_is_run_compared_or_marked_as_an_illustration():
    """No block escapes the test silently: a text or sh block is an output the test compares, or says why not."""
    outputs, _ = check_block_markers(README, "README.md")
    assert outputs >= 3, outputs  # the demo, neighbors, an SQL answer


def test_normalisation_changes_only_the_seconds_and_line_ends():
    assert normalised("(demo took 38s)\nReport: x  \n") == normalised("(demo took 7s)\nReport: x\n") == "(demo took Ns)\nReport: x"
    assert normalised("(demo took 38s) ") != normalised("(demo took 38.5s)")
    assert normalised("106 mistakes") != normalised("107 mistakes")
    assert normalised("  - group 0") != normalised("- group 0")  # leading spaces are kept


def test_readme_runs_as_printed(tmp_path_factory, tmp_path, monkeypatch):
    demo_output = demo_workspace(tmp_path_factory, tmp_path, monkeypatch)  # the demo ran once, trained nothing
    try_next = [l.strip() for l in demo_output.splitlines() if l.strip().startswith("saliencydb ")]
    assert len(try_next) == 3
    for line in try_next:  # the three commands the demo suggests work as printed
        run_cli(*shlex.split(line)[1:])
    ran, differences = run_blocks(README, "README.md", demo_output)
    assert not differences, "\n\n".join(differences)
    assert ran["console"] >= 5 and ran["sql"] >= 1 and ran["python"] >= 1 and ran["output"] >= 3, ran
    assert not list((tmp_path / "cache" / "saliencydb").glob("mnist5k-*")), list((tmp_path / "cache").rglob("*.pt"))
