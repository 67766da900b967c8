"""Terminal manners: output piped to another program has each row on one line, a number is never split
across lines in a narrow terminal, a reader that goes away (`| head`) ends the command quietly, and counts
are singular or plural as they should be."""

import re
import subprocess
import sys

from click.testing import CliRunner

from saliencydb.cli import cli, output

SAL = [sys.executable, "-m", "saliencydb.cli"]
WIDE = ("SELECT sample_id, split, key, label_name, pred_name, pred_conf, loss, true_conf, correct, "
        "'a long text value that would not fit' AS t1, 'another long text value' AS t2 FROM samples ORDER BY sample_id LIMIT 5")


def test_piped_tables_keep_each_row_on_one_line(digits_db):
    out = subprocess.run(SAL + ["sql", "--db", str(digits_db), WIDE], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "COLUMNS": "60"})
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 5, out.stdout  # five samples, five lines: nothing folded, whatever COLUMNS says
    assert all("a long text value that would not fit" in r for r in rows)


def test_numbers_are_never_split_in_a_narrow_terminal(monkeypatch):
    monkeypatch.setattr(output, "terminal_width", lambda: 50)
    rows = [{"name": "a fairly long label that must fold somewhere", "z": -0.840694, "count": 1234567, "note": "x" * 30}
            for _ in range(3)]
    runner = CliRunner()

    import click

    @click.command()
    def show():
        output.emit_rows(rows, "table")

    text = runner.invoke(show).output
    assert text.count("-0.840694") == 3 and text.count("1234567") == 3, text
    assert "a fairly long label that must fold somewhere" not in text  # the text column took the squeeze


def test_a_reader_that_goes_away_ends_the_command_quietly(digits_db):
    for args in (["sql", "--db", str(digits_db), "SELECT * FROM samples"], ["info", "--db", str(digits_db)],
                 ["sql", "--db", str(digits_db), "--format", "csv", "SELECT sample_id, label FROM samples"]):
        cmd = " ".join(map(_quote, SAL + args)) + " | head -n 1"
        out = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True, timeout=120)
        assert out.stderr == "", out.stderr  # no "Error: Broken pipe", no "Exception ignored"
        assert out.returncode in (0, 1, 141) and len(out.stdout.splitlines()) == 1, (out.returncode, out.stdout)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def test_counts_are_singular_or_plural(digits_copy):
    runner = CliRunner()
    r = runner.invoke(cli, ["vacuum", "--db", str(digits_copy), "--keep-versions", "1", "--older-than", "0s"])
    assert r.exit_code == 0, r.output
    assert re.search(r"; 1 version kept \(commit \d+\)$", r.output.strip()), r.output
    assert re.search(r"removed \d+ versions? and \d+ files?", r.output), r.output
    r = runner.invoke(cli, ["versions", "--db", str(digits_copy)])
    assert "1 kept version of" in r.output and "1 kept versions" not in r.output, r.output
    assert output.plural(1, "file") == "1 file" and output.plural(0, "file") == "0 files"
    assert output.plural(2, "query", "queries") == "2 queries"
