"""The README as a tested document: every command in it runs as printed (on a fresh demo database), every
output block in it is the real output of its command, and every CLI command is documented there.

A block that the test does not run as python, sql or console carries a marker on the line before it:

    <!-- readme-test: output: saliencydb ARGS -->   the block is exactly the standard output of that command,
                                                    run at that point of the README (in the README's order, in
                                                    the directory holding demo-db, after every block above it)
    <!-- readme-test: output of the SQL above -->    the block is exactly `saliencydb sql --db demo-db QUERY`'s
                                                    output for the sql block just before it
    <!-- readme-test: illustration (WHY) -->         not run, and WHY says why (a GPU, ImageNet, a download, a
                                                    directory layout); the README says so in its text too

Before an output is compared, exactly two things are normalised (``normalised``): the seconds of the demo's
``(demo took Ns)`` line, which are wall-clock time, and spaces at the ends of lines (rich pads a table's
centred title with them; editors strip them). Tables are rendered as when the output goes to a pipe or a
file (COLUMNS=120: ``cli.output.terminal_width``). Nothing else varies between runs: the demo uses the
weights shipped in the package, and its seeds are fixed.
"""

import difflib
import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from saliencydb.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?:<!-- readme-test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
RUN = ("python", "sql", "console")  # the languages the test runs
DEMO_SECONDS = re.compile(r"^\(demo took \d+s\)$", re.M)


def blocks():
    return [(m.group("lang"), m.group("body"), m.group("marker") or "") for m in FENCE.finditer(README)]


def normalised(text: str) -> str:
    """``text`` with the demo's wall-clock seconds replaced and line-end spaces dropped (and nothing else)."""
    text = DEMO_SECONDS.sub("(demo took Ns)", text)
    return "\n".join(line.rstrip() for line in text.rstrip("\n").split("\n"))


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _compare(what: str, printed: str, real: str) -> str | None:
    """None when the README's block equals the real output after ``normalised``, else the difference."""
    if normalised(printed) == normalised(real):
        return None
    diff = difflib.unified_diff(normalised(printed).split("\n"), normalised(real).split("\n"), "README", "real", lineterm="")
    return f"{what}:\n" + "\n".join(diff)


def test_every_command_is_documented():
    for name in cli.commands:
        assert f"`{name}`" in README and f"saliencydb {name}" in README, name


def test_make_targets_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    for lang, body, _ in blocks():
        if lang == "sh":
            for line in body.splitlines():
                if line.startswith("make "):
                    target = line.split()[1]
                    assert re.search(rf"^{target}:", makefile, re.M), target
    assert "saliencydb demo" in makefile and "pytest" in makefile


def test_every_block_is_run_compared_or_marked_as_an_illustration():
    """No block escapes the test silently: a text or sh block is an output the test compares, or says why not."""
    outputs = illustrations = 0
    for lang, body, marker in blocks():
        if lang in RUN:
            continue
        assert marker.startswith(("output: saliencydb ", "output of the SQL above", "illustration (")), (lang, body[:80])
        if marker.startswith("illustration ("):
            assert marker.endswith(")") and len(marker) > len("illustration ()") + 10, marker  # says why
            illustrations += 1
        else:
            outputs += 1
    assert outputs >= 9, outputs  # the demo, neighbors, mistakes, five SQL answers, the ViT demo


def test_normalisation_changes_only_the_seconds_and_line_ends():
    assert normalised("(demo took 38s)\nReport: x  \n") == normalised("(demo took 7s)\nReport: x\n") == "(demo took Ns)\nReport: x"
    assert normalised("(demo took 38s) ") != normalised("(demo took 38.5s)")
    assert normalised("106 mistakes") != normalised("107 mistakes")
    assert normalised("  - group 0") != normalised("- group 0")  # leading spaces are kept


def test_readme_runs_as_printed(tmp_path, monkeypatch):
    import saliencydb.demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "fiftyone"))  # the export's MongoDB, here
    monkeypatch.setenv("COLUMNS", "120")  # tables as written to a pipe or a file

    def no_training(*args, **kwargs):
        raise AssertionError("the demo trained a model; it should use the shipped weights")

    with monkeypatch.context() as m:  # (the README's seed-sweep, further down, trains)
        m.setattr(saliencydb.demo, "train_demo_model", no_training)
        # `make demo` = set up .venv, then `saliencydb demo` (its progress bars go to stderr; --quiet drops them)
        demo = _run(["demo", "--quiet"])
    assert demo.exit_code == 0, demo.output
    assert (tmp_path / "demo-db" / "report.html").is_file()
    assert not (tmp_path / "cache" / "saliencydb").exists()  # nothing trained, nothing cached
    try_next = [l.strip() for l in demo.stdout.splitlines() if l.strip().startswith("saliencydb ")]
    assert len(try_next) == 3
    for line in try_next:  # the three commands the demo suggests work as printed
        res = _run(shlex.split(line)[1:])
        assert res.exit_code == 0, (line, res.output)
    ran, differences = _run_blocks(demo.stdout)
    assert not differences, "\n\n".join(differences)
    assert ran["console"] >= 15 and ran["sql"] >= 5 and ran["python"] >= 3 and ran["output"] >= 9, ran
    # neither demo (CNN, ViT) trained its model: only the seed sweep's sklearn-digits models are in the cache
    assert not list((tmp_path / "cache" / "saliencydb").glob("mnist5k-*")), list((tmp_path / "cache").rglob("*.pt"))


def _run_blocks(demo_output: str) -> tuple[dict, list[str]]:
    """Run every block in the README's order; returns what ran, and each output block that differs from the
    real output."""
    ran, differences, last_sql = {"console": 0, "sql": 0, "python": 0, "output": 0}, [], None
    for lang, body, marker in blocks():
        if lang == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "readme"})
            ran["python"] += 1
        elif lang == "sql":
            res = _run(["sql", "--db", "demo-db", body, "--format", "json"])
            assert res.exit_code == 0, (body, res.output)
            assert res.output.strip() not in ("", "[]"), body
            ran["sql"] += 1
            last_sql = body
        elif lang == "console":
            ran["console"] += _run_console(body, marker)
        elif marker == "output of the SQL above":
            assert last_sql is not None, body
            res = _run(["sql", "--db", "demo-db", last_sql])
            assert res.exit_code == 0, (last_sql, res.output)
            differences.append(_compare(f"the output of {last_sql!r}", body, res.stdout))
            ran["output"], last_sql = ran["output"] + 1, None
        elif marker.startswith("output: saliencydb "):
            args = shlex.split(marker[len("output: saliencydb "):])
            if args == ["demo"]:  # the run the test started with
                real = demo_output
            else:
                res = _run(args)
                assert res.exit_code == 0, (marker, res.output)
                real = res.stdout
            differences.append(_compare(marker, body, real))
            ran["output"] += 1
    return ran, [d for d in differences if d]


def _run_console(body: str, marker: str) -> int:
    """Run each `$ saliencydb ...` line of a console block; returns how many ran."""
    n = 0
    for line in body.splitlines():
        if not line.startswith("$ "):
            continue
        args = shlex.split(line[2:])
        assert args[0] == "saliencydb", line
        res = _run(args[1:])
        if marker.startswith("expect-error"):
            assert res.exit_code == 1, (line, res.output)
            assert res.output.startswith("Error: ") and res.output.count("\n") == 1, (line, res.output)
        else:
            assert res.exit_code == 0, (line, res.output)
        n += 1
    return n
