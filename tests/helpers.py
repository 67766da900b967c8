"""Helpers shared by the tests: run the CLI, make real image folders."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from saliencydb.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, expect: int | None = 0):
    """Run the CLI in-process; return the click Result."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, result.output
    return result


def run_cli_subprocess(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saliencydb.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=kw.pop("cwd", ROOT), **kw)


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class=4, size=(40, 36), seed=0) -> Path:
    """Real PNG and JPEG files of random pictures, one folder per class."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            arr[..., ci % 3] //= 2  # a little class signal
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr).save(root / c / f"img{i}.{ext}")
    return root


# --- Documents whose blocks the tests run: the README and every page of the site (docs/) ------------------------
#
# A block that the tests do not run as python, sql or console carries a marker on the line before it:
#
#     <!-- readme-test: output: saliencydb ARGS -->   the block is exactly the standard output of that command, run
#                                                     at that point of the document (in the document's order, in the
#                                                     directory holding demo-db, after every block above it)
#     <!-- readme-test: output of the SQL above -->    the block is exactly `saliencydb sql --db demo-db QUERY`'s
#                                                     output for the sql block just before it
#     <!-- readme-test: illustration (WHY) -->         not run (a python block with it neither), and WHY says why
#                                                     (a GPU, ImageNet, a download, a server, a directory layout)
#     <!-- readme-test: expect-error (WHY) -->         a console block whose every command must fail in one line
#
# Before an output is compared, exactly two things are normalised (``normalised``): the seconds of the demo's
# ``(demo took Ns)`` line, which are wall-clock time, and spaces at the ends of lines (rich pads a table's centred
# title with them; editors strip them). Tables are rendered as when the output goes to a pipe or a file
# (COLUMNS=120: ``cli.output.terminal_width``). Nothing else varies between runs: the demo uses the weights shipped
# in the package, and its seeds are fixed.

import difflib
import re
import shlex
import shutil

import pytest

FENCE = re.compile(r"(?:<!-- readme-test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
RUN = ("python", "sql", "console")  # the languages the tests run
DEMO_SECONDS = re.compile(r"^\(demo took \d+s\)$", re.M)
DOCS = ROOT / "docs"


def doc_blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, marker) of every fenced block of a Markdown document, in order."""
    return [(m.group("lang"), m.group("body"), m.group("marker") or "") for m in FENCE.finditer(text)]


def site_pages() -> list[Path]:
    """The site's pages in the order of mkdocs.yml's nav (the order their blocks run in), then any page the nav
    leaves out (mkdocs.yml's validation makes such a page a build warning, so there is none)."""
    nav = re.findall(r"^\s*- (?:[^:\n]+: )?([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = [DOCS / p for p in nav]
    return pages + sorted(p for p in DOCS.rglob("*.md") if p not in pages)


def normalised(text: str) -> str:
    """``text`` with the demo's wall-clock seconds replaced and line-end spaces dropped (and nothing else)."""
    text = DEMO_SECONDS.sub("(demo took Ns)", text)
    return "\n".join(line.rstrip() for line in text.rstrip("\n").split("\n"))


def compare_output(what: str, printed: str, real: str, document: str = "README") -> str | None:
    """None when the document's block equals the real output after ``normalised``, else the difference."""
    if normalised(printed) == normalised(real):
        return None
    diff = difflib.unified_diff(normalised(printed).split("\n"), normalised(real).split("\n"), document, "real",
                                lineterm="")
    return f"{document}: {what}:\n" + "\n".join(diff)


_DEMO: dict = {}


def demo_once(tmp_path_factory) -> tuple[str, Path]:
    """Run ``saliencydb demo --quiet`` once per test session (as `make demo` does, in an empty folder, with its own
    cache) and check that it trained nothing; returns its standard output and the folder holding its demo-db.
    The README's and the site's tests each work on a copy of that demo-db (``demo_workspace``)."""
    if "run" not in _DEMO:
        import saliencydb.demo

        where = tmp_path_factory.mktemp("demo-run")

        def no_training(*args, **kwargs):
            raise AssertionError("the demo trained a model; it should use the shipped weights")

        with pytest.MonkeyPatch.context() as m:
            m.chdir(where)
            m.setenv("XDG_CACHE_HOME", str(where / "cache"))
            m.setenv("COLUMNS", "120")  # tables as written to a pipe or a file
            m.setattr(saliencydb.demo, "train_demo_model", no_training)
            # `make demo` = set up .venv, then `saliencydb demo` (its progress bars go to stderr; --quiet drops them)
            demo = run_cli("demo", "--quiet", expect=None)
        assert demo.exit_code == 0, demo.output
        assert (where / "demo-db" / "report.html").is_file()
        assert not (where / "cache" / "saliencydb").exists()  # nothing trained, nothing cached
        _DEMO["run"] = (demo.stdout, where)
    return _DEMO["run"]


def demo_workspace(tmp_path_factory, tmp_path: Path, monkeypatch) -> str:
    """A fresh copy of the demo's database in ``tmp_path``, made the working directory, with the environment the
    documents' blocks run in; returns the demo's standard output."""
    stdout, where = demo_once(tmp_path_factory)
    shutil.copytree(where / "demo-db", tmp_path / "demo-db", symlinks=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "fiftyone"))  # the export's MongoDB, here
    monkeypatch.setenv("COLUMNS", "120")  # tables as written to a pipe or a file
    return stdout


def run_blocks(text: str, document: str, demo_output: str, ran: dict | None = None) -> tuple[dict, list[str]]:
    """Run every block of a document in its order (in the working directory holding demo-db); returns what ran
    (added to ``ran``), and each output block that differs from the real output."""
    ran = ran if ran is not None else {"console": 0, "sql": 0, "python": 0, "output": 0}
    differences, last_sql = [], None
    for lang, body, marker in doc_blocks(text):
        if marker.startswith("illustration ("):
            continue
        if lang == "python":
            exec(compile(body, document, "exec"), {"__name__": "readme"})
            ran["python"] += 1
        elif lang == "sql":
            res = run_cli("sql", "--db", "demo-db", body, "--format", "json", expect=None)
            assert res.exit_code == 0, (document, body, res.output)
            assert res.output.strip() not in ("", "[]"), (document, body)
            ran["sql"] += 1
            last_sql = body
        elif lang == "console":
            ran["console"] += _run_console(body, marker, document)
        elif marker == "output of the SQL above":
            assert last_sql is not None, (document, body)
            res = run_cli("sql", "--db", "demo-db", last_sql, expect=None)
            assert res.exit_code == 0, (document, last_sql, res.output)
            differences.append(compare_output(f"the output of {last_sql!r}", body, res.stdout, document))
            ran["output"], last_sql = ran["output"] + 1, None
        elif marker.startswith("output: saliencydb "):
            args = shlex.split(marker[len("output: saliencydb "):])
            if args == ["demo"]:  # the run the test started with
                real = demo_output
            else:
                res = run_cli(*args, expect=None)
                assert res.exit_code == 0, (document, marker, res.output)
                real = res.stdout
            differences.append(compare_output(marker, body, real, document))
            ran["output"] += 1
    return ran, [d for d in differences if d]


def _run_console(body: str, marker: str, document: str) -> int:
    """Run each `$ saliencydb ...` line of a console block; returns how many ran."""
    n = 0
    for line in body.splitlines():
        if not line.startswith("$ "):
            continue
        args = shlex.split(line[2:])
        assert args[0] == "saliencydb", (document, line)
        res = run_cli(*args[1:], expect=None)
        if marker.startswith("expect-error"):
            assert res.exit_code == 1, (document, line, res.output)
            assert res.output.startswith("Error: ") and res.output.count("\n") == 1, (document, line, res.output)
        else:
            assert res.exit_code == 0, (document, line, res.output)
        n += 1
    return n


def check_block_markers(text: str, document: str) -> tuple[int, int]:
    """No block escapes the tests silently: a block the tests do not run is an output they compare, or says why
    not. Returns (outputs, illustrations)."""
    outputs = illustrations = 0
    for lang, body, marker in doc_blocks(text):
        if marker.startswith("illustration ("):
            assert marker.endswith(")") and len(marker) > len("illustration ()") + 10, (document, marker)  # says why
            illustrations += 1
            continue
        if lang in RUN:
            continue
        assert marker.startswith(("output: saliencydb ", "output of the SQL above")), (document, lang, body[:80])
        outputs += 1
    return outputs, illustrations


def check_make_targets(text: str, document: str) -> None:
    """Every `make TARGET` line of an sh block names a rule of the Makefile."""
    makefile = (ROOT / "Makefile").read_text()
    for lang, body, _ in doc_blocks(text):
        if lang == "sh":
            for line in body.splitlines():
                if line.startswith("make "):
                    target = line.split()[1]
                    assert re.search(rf"^{target}:", makefile, re.M), (document, target)
