"""Every command in the README runs as printed (on a fresh demo database), and every CLI
command is documented there."""

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from saliencydb.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?:<!-- readme-test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def blocks():
    return [(m.group("lang"), m.group("body"), m.group("marker") or "") for m in FENCE.finditer(README)]


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


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


def test_readme_runs_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "fiftyone"))  # the export's MongoDB, here
    # `make demo` = set up .venv, then this:
    r = _run(["demo", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "held-out digits" in r.output and "Try next:" in r.output and (tmp_path / "demo-db" / "report.html").is_file()
    try_next = [l.strip() for l in r.output.splitlines() if l.strip().startswith("saliencydb ")]
    assert len(try_next) == 3
    for line in try_next:  # the three commands the demo suggests work as printed
        res = _run(shlex.split(line)[1:])
        assert res.exit_code == 0, (line, res.output)
    ran = {"console": 0, "sql": 0, "python": 0}
    for lang, body, marker in blocks():
        if lang == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "readme"})
            ran["python"] += 1
        elif lang == "sql":
            res = _run(["sql", "--db", "demo-db", body, "--format", "json"])
            assert res.exit_code == 0, (body, res.output)
            assert res.output.strip() not in ("", "[]"), body
            ran["sql"] += 1
        elif lang == "console":
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
                ran["console"] += 1
    assert ran["console"] >= 15 and ran["sql"] >= 5 and ran["python"] >= 3, ran
