"""The way in (issue 13, first part): labels matched to the database's classes by name, link
loops, triage against groups built without the split, the split's accuracy everywhere, and
python: model files stored absolutely with their hash. The real CLI in subprocesses."""

import csv
import json
import os

import pytest

from saliencydb.data import parse_data_spec

from helpers import ROOT, run_cli_subprocess

CNN = "python:saliencydb.data.zoo:small_cnn"


def cli(*args, expect=0, cwd=ROOT):
    r = run_cli_subprocess(*args, cwd=cwd, timeout=300)
    assert r.returncode == expect, (args, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def jcli(*args, cwd=ROOT):
    return json.loads(cli(*args, "--format", "json", cwd=cwd).stdout)


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    """Real digits as PNG files in folders d0..d9 (6 each), and the same images' labels by key."""
    root = tmp_path_factory.mktemp("digits") / "imgs"
    source = parse_data_spec("builtin:mnist5k:val")
    per_class: dict[int, int] = {}
    for i in range(len(source)):
        label = source.label(i)
        if per_class.get(label, 0) >= 6:
            continue
        per_class[label] = per_class.get(label, 0) + 1
        (root / f"d{label}").mkdir(parents=True, exist_ok=True)
        source.load(i).save(root / f"d{label}" / f"{i}.png")
        if len(per_class) == 10 and min(per_class.values()) == 6:
            break
    return root


@pytest.fixture
def folder_db(tmp_path, digit_folders, trained_weights):
    db = tmp_path / "db"
    cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", f"imagefolder:{digit_folders}", "--transform", "mnist",
        "--quiet", "--workers", 0)
    return db


def _labels(db, split):
    rows = jcli("sql", "--db", db, f"SELECT key, label, label_name, correct FROM samples WHERE split = '{split}'")
    return {r["key"]: (r["label"], r["label_name"], r["correct"]) for r in rows}


def test_names_are_matched_to_the_database_classes(folder_db, digit_folders, tmp_path):
    base = _labels(folder_db, "val")
    assert {name for _, name, _ in base.values()} == {f"d{k}" for k in range(10)}
    assert all(name == f"d{label}" for label, name, _ in base.values())
    # a folder holding only d3 and d7: d3 is class 3, not the folder's first class
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("d3", "d7"):
        os.symlink(digit_folders / name, sub / name, target_is_directory=True)
    cli("ingest", "--db", folder_db, "--data", f"imagefolder:{sub}", "--split", "sub", "--quiet", "--workers", 0)
    got = _labels(folder_db, "sub")
    assert len(got) == 12 and {n for _, n, _ in got.values()} == {"d3", "d7"}
    assert all(got[k] == base[k] for k in got)  # same label, name and correctness as in the full folder
    # a CSV of names: the same
    csv_path = tmp_path / "names.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for key in sorted(got):
            w.writerow([str(digit_folders / key), key.split("/")[0]])
    cli("ingest", "--db", folder_db, "--data", f"csv:{csv_path}", "--split", "bycsv", "--quiet", "--workers", 0)
    by_csv = _labels(folder_db, "bycsv")
    assert sorted((base[os.path.relpath(k, digit_folders)]) for k in by_csv) == sorted(by_csv.values())
    # the split's accuracy is the one the model earns on those images, not 0%
    info = jcli("info", "--db", folder_db)
    want = sum(c for _, _, c in got.values()) / len(got)
    assert info["splits"]["sub"]["accuracy"] == pytest.approx(want, abs=1e-6)


def test_unknown_names_are_per_sample_failures(folder_db, digit_folders, tmp_path):
    csv_path = tmp_path / "odd.csv"
    one = next(iter(sorted((digit_folders / "d1").iterdir())))
    two = next(iter(sorted((digit_folders / "d2").iterdir())))
    csv_path.write_text(f"path,label\n{one},d1\n{two},zebra\n")
    r = cli("ingest", "--db", folder_db, "--data", f"csv:{csv_path}", "--split", "odd", "--quiet", "--workers", 0, expect=2)
    assert "1 samples added" in r.stdout and "1 failed" in r.stdout
    fail = jcli("sql", "--db", folder_db, "SELECT key, reason FROM failures WHERE split = 'odd'")
    assert fail == [{"key": str(two), "reason": fail[0]["reason"]}]
    assert "'zebra' is not one of the database's classes (d0, d1, d2" in fail[0]["reason"]


@pytest.mark.parametrize("rows, message", [
    ("a.png,7\nb.png,three\n", "mixes class indices ('7', line 2) and class names ('three', line 3)"),
    ("a.png,7.0\nb.png,3\n", "label '7.0' on line 2"),
])
def test_mixed_or_fractional_labels_are_refused_in_one_line(folder_db, tmp_path, rows, message):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,label\n" + rows)
    r = cli("ingest", "--db", folder_db, "--data", f"csv:{csv_path}", "--split", "bad", "--quiet", expect=1)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_integer_labels_are_checked_against_the_classes(folder_db, digit_folders, tmp_path):
    one = next(iter(sorted((digit_folders / "d1").iterdir())))
    csv_path = tmp_path / "ints.csv"
    csv_path.write_text(f"path,label\n{one},1\n{digit_folders / 'd2' / next(iter(sorted(os.listdir(digit_folders / 'd2'))))},12\n")
    r = cli("ingest", "--db", folder_db, "--data", f"csv:{csv_path}", "--split", "ints", "--quiet", "--workers", 0, expect=2)
    assert "label 12 is outside the model's 10 classes" in r.stderr
    assert _labels(folder_db, "ints")[str(one)][1] == "d1"


def test_a_link_loop_does_not_multiply_samples(tmp_path, digit_folders, trained_weights):
    imgs = tmp_path / "imgs"
    for name in ("0", "1"):  # the model has no class names: its classes are "0".."9"
        (imgs / name).mkdir(parents=True)
        for f in sorted(os.listdir(digit_folders / f"d{name}")):
            (imgs / name / f).write_bytes((digit_folders / f"d{name}" / f).read_bytes())
    os.symlink(".", imgs / "0" / "loop")  # a loop
    os.symlink(imgs / "1", imgs / "0" / "also-1")  # class 1's files reached from class 0 as well
    db = tmp_path / "db"
    r = cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", f"imagefolder:{imgs}", "--transform", "mnist",
            "--quiet", "--workers", 0)
    assert "12 samples added" in r.stdout
    rows = jcli("sql", "--db", db, "SELECT key, label FROM samples ORDER BY key")
    assert len({r["key"] for r in rows}) == 12
    assert all(r["label"] == int(r["key"].split("/")[0]) and "loop" not in r["key"] and "also" not in r["key"] for r in rows)


def test_triage_compares_only_with_groups_built_without_the_split(digits_copy):
    cli("clusters", "--db", digits_copy, "--n-clusters", 3)  # over val and train
    r = cli("triage", "--db", digits_copy, "--split", "train", expect=1)
    assert "built on split(s) train, val, which include 'train'" in r.stderr and "--split val" in r.stderr
    cli("clusters", "--db", digits_copy, "--n-clusters", 3, "--split", "val")
    out = jcli("triage", "--db", digits_copy, "--split", "train")
    assert out["groups_built_on"] == ["val"] and out["new_mistakes"] > 0
    assert out["new_mistakes"] == jcli("sql", "--db", digits_copy,
                                       "SELECT count(*) AS n FROM samples WHERE split = 'train' AND NOT correct")[0]["n"]
    assert "(built on val)" in cli("triage", "--db", digits_copy, "--split", "train").stdout


def test_the_split_accuracy_is_reported_after_a_resume(tmp_path, trained_weights):
    db = tmp_path / "db"
    args = ["index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", "builtin:mnist5k:val",
            "--quiet", "--workers", 0]
    cli(*args, "--limit", 40)
    r = cli(*args, "--limit", 100)
    info = jcli("info", "--db", db)["splits"]["val"]
    assert info["samples"] == 100
    assert f"split accuracy {info['accuracy']:.2%} over its 100 samples" in r.stdout
    assert f"{info['accuracy']:.2%}" in cli("info", "--db", db).stdout  # the same form in info's table


def test_python_model_files_are_stored_absolutely_and_checked(tmp_path, trained_weights):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mymodel.py").write_text("from saliencydb.data.zoo import small_cnn\n\n\ndef factory():\n    return small_cnn()\n")
    db = tmp_path / "db"
    cli("index", "--db", db, "--model", "python:mymodel.py:factory", "--weights", trained_weights,
        "--data", "builtin:mnist5k:val", "--limit", 20, "--quiet", "--workers", 0, cwd=work)
    m = json.loads((db / "manifest.json").read_text())
    assert m["model"]["spec"] == f"python:{work / 'mymodel.py'}:factory" and len(m["model"]["code_sha256"]) == 64
    # from another working directory
    cli("ingest", "--db", db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 10, "--quiet", "--workers", 0,
        cwd=tmp_path)
    with open(work / "mymodel.py", "a") as f:
        f.write("# edited\n")
    r = cli("ingest", "--db", db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 20, "--quiet",
            "--workers", 0, cwd=tmp_path, expect=1)
    assert "mymodel.py changed since the database was made" in r.stderr


def test_a_wrong_transform_is_refused_before_anything_is_written(tmp_path, trained_weights):
    db = tmp_path / "db"
    args = ["index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", "builtin:mnist5k:val",
            "--limit", 20, "--quiet", "--workers", 0]
    r = cli(*args, "--transform", "imagenet", expect=1)
    assert "fails on this data's first sample" in r.stderr and "(3, 224, 224)" in r.stderr and "--transform" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (db / "manifest.json").exists()
    cli(*args, "--transform", "mnist")
    assert jcli("info", "--db", db)["samples"] == 20


def test_a_database_without_samples_can_start_over(tmp_path, digit_folders, trained_weights):
    imgs = tmp_path / "imgs"
    for name in ("x", "y"):  # names the model (classes "0".."9") does not know: refused before anything is made
        (imgs / name).mkdir(parents=True)
        (imgs / name / "a.png").write_bytes((digit_folders / "d1" / sorted(os.listdir(digit_folders / "d1"))[0]).read_bytes())
    db = tmp_path / "db"
    r = cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--transform", "mnist",
            "--data", f"imagefolder:{imgs}", "--quiet", "--workers", 0, expect=1)
    assert "the model names none of its 10 classes and the data names 2 (x, y)" in r.stderr and not db.exists()
    broken = tmp_path / "broken"
    for name in ("1", "2"):  # the model's classes, but files that cannot be decoded: every sample fails
        (broken / name).mkdir(parents=True)
        (broken / name / "a.png").write_bytes(b"not a png")
    r = cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--transform", "mnist",
            "--data", f"imagefolder:{broken}", "--quiet", "--workers", 0, expect=2)
    assert "2 failed" in r.stdout and "a.png" in r.stderr
    r = cli("index", "--db", db, "--transform", "mode=L,size=28,mean=0.5,std=0.5", "--data", "builtin:mnist5k:val",
            "--quiet", expect=1)
    assert "has no samples yet: to start over" in r.stderr
    cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--transform", "mode=L,size=28,mean=0.5,std=0.5",
        "--data", "builtin:mnist5k:val", "--limit", 10, "--quiet", "--workers", 0)
    assert jcli("info", "--db", db)["model"]["transform"]["mean"] == [0.5]


def test_undecodable_file_names_and_csv_files(tmp_path, digit_folders, trained_weights):
    imgs = tmp_path / "imgs"
    (imgs / "3").mkdir(parents=True)
    png = (digit_folders / "d3" / sorted(os.listdir(digit_folders / "d3"))[0]).read_bytes()
    with open(os.fsencode(imgs / "3") + b"/caf\xe9.png", "wb") as f:  # a Latin-1 name: not UTF-8
        f.write(png)
    (imgs / "3" / "ok.png").write_bytes(png)
    db = tmp_path / "db"
    cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--num-classes", 10, "--transform", "mnist",
        "--data", f"imagefolder:{imgs}", "--quiet", "--workers", 0)
    keys = [r["key"] for r in jcli("sql", "--db", db, "SELECT key FROM samples ORDER BY key")]
    assert keys == ["3/caf\\xe9.png", "3/ok.png"]
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"path,label\ncaf\xe9.png,3\n")
    r = cli("ingest", "--db", db, "--data", f"csv:{bad}", "--split", "x", "--quiet", expect=1)
    assert "is not UTF-8 text" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tiny_data_gets_a_warning_and_defaults_fit_the_model(digits_copy, tmp_path, trained_weights):
    r = cli("clusters", "--db", digits_copy, "--n-clusters", 3)
    assert "warning" not in r.stderr
    n_err = jcli("sql", "--db", digits_copy, "SELECT count(*) AS n FROM samples WHERE NOT correct")[0]["n"]
    r = cli("clusters", "--db", digits_copy, "--n-clusters", n_err // 2)
    assert f"warning: {n_err} samples in {n_err // 2} clusters" in r.stderr
    db = tmp_path / "tiny"
    cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", "builtin:mnist5k:val", "--limit", 13,
        "--quiet", "--workers", 0)
    r = cli("mistakes", "--db", db, "-k", 10, "--bootstrap", 10, "--quiet")
    assert "warning: split 'val' has 13 samples for k=10" in r.stderr


def test_validate_defaults_to_the_ks_that_fit_the_model(digits_copy):
    from saliencydb.interventions.filters import max_k, parse_ks

    top = max_k(112)
    assert parse_ks(None, 112) == [k for k in (1, 5, 10, 25, 50) if k <= top]
    assert parse_ks(None, 48) == [k for k in (1, 5, 10, 25, 50) if k <= max_k(48)] and max(parse_ks(None, 48)) <= max_k(48)
    out = jcli("validate", "--db", digits_copy, "--split", "val", "--method", "prune", "--limit", 2, "--bootstrap", 10)
    assert sorted({r["k"] for r in out["rows"] if r["k"] is not None}) == parse_ks(None, 112)


def test_sql_help_lists_every_table_view_and_macro(digits_db):
    import re

    import saliencydb

    text = cli("sql", "--help").stdout
    listed = set()
    for label in ("Tables", "Views", "Macros"):
        line = re.search(rf"{label}: ([^\n]*)\.", text).group(1)
        listed |= {re.sub(r"\(.*", "", name).strip() for name in re.split(r",\s*(?![^()]*\))", line)}
    with saliencydb.open(digits_db) as db:
        views = {r[0] for r in db.con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        macros = {r[0] for r in db.con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'table_macro' AND NOT internal").fetchall()}
    assert listed == {v for v in views | macros if not v.startswith("_")}


def test_every_option_is_described():
    import click

    from saliencydb.cli import cli as group

    for name, command in group.commands.items():
        for p in command.params:
            if isinstance(p, click.Option):
                assert p.help, (name, p.opts)
                if "--quiet" in p.opts:
                    assert "-q" in p.opts, name


def test_random_weights_are_refused_unless_asked_for(tmp_path, trained_weights):
    args = ["index", "--db", tmp_path / "db", "--data", "builtin:mnist5k:val", "--limit", 5, "--quiet", "--workers", 0]
    r = cli(*args, "--model", CNN, expect=1)
    assert "would be profiled with random weights" in r.stderr and "--random-weights" in r.stderr
    assert not (tmp_path / "db" / "manifest.json").exists()
    cli(*args, "--model", CNN, "--random-weights")
    # a factory that builds the same weights every time (it loads them itself) is not refused
    (tmp_path / "fixed.py").write_text(
        "import torch\nfrom saliencydb.data.zoo import small_cnn\n\n\ndef factory():\n"
        f"    m = small_cnn()\n    m.load_state_dict(torch.load({str(trained_weights)!r}, weights_only=True))\n    return m\n")
    cli("index", "--db", tmp_path / "db2", "--model", f"python:{tmp_path / 'fixed.py'}:factory", "--data", "builtin:mnist5k:val",
        "--limit", 5, "--quiet", "--workers", 0)


def test_an_incomplete_csv_row_is_a_per_sample_failure(folder_db, digit_folders, tmp_path):
    files = [digit_folders / "d4" / f for f in sorted(os.listdir(digit_folders / "d4"))[:2]]
    csv_path = tmp_path / "gaps.csv"
    csv_path.write_text(f"path,label\n{files[0]},d4\n{files[1]},\n,d4\n")
    r = cli("ingest", "--db", folder_db, "--data", f"csv:{csv_path}", "--split", "gaps", "--quiet", "--workers", 0, expect=2)
    assert "1 samples added" in r.stdout and "2 failed" in r.stdout
    reasons = sorted(f["reason"] for f in jcli("sql", "--db", folder_db, "SELECT reason FROM failures WHERE split = 'gaps'"))
    assert reasons == ["line 3 of gaps.csv lacks a label; fill both columns", "line 4 of gaps.csv lacks a path; fill both columns"] or \
        all("lacks a" in x for x in reasons)
    assert _labels(folder_db, "gaps")[str(files[0])][1] == "d4"


def test_index_with_classes_matches_folder_names_to_them(tmp_path, digit_folders, trained_weights):
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"d{k}\n" for k in range(10)))
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("d3", "d7"):
        os.symlink(digit_folders / name, sub / name, target_is_directory=True)
    db = tmp_path / "db"
    args = ["index", "--db", db, "--model", CNN, "--weights", trained_weights, "--transform", "mnist",
            "--data", f"imagefolder:{sub}", "--quiet", "--workers", 0]
    cli(*args, "--classes", names)
    rows = jcli("sql", "--db", db, "SELECT DISTINCT label, label_name FROM samples ORDER BY label")
    assert rows == [{"label": 3, "label_name": "d3"}, {"label": 7, "label_name": "d7"}]
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    r = cli("index", "--db", tmp_path / "db2", *args[3:], "--classes", short, expect=1)
    assert "--classes names 2 classes, but the model has 10" in r.stderr


def test_numbers_print_with_enough_digits(digits_db):
    sims = [n["similarity"] for n in jcli("neighbors", "--db", digits_db, "--id", 5, "-k", 5)["neighbors"]]
    table = cli("neighbors", "--db", digits_db, "--id", 5, "-k", 5).stdout
    for s in sims:
        assert f"{s:.6g}" in table  # six significant digits: neighbours with close similarities differ
    rows = jcli("sql", "--db", digits_db, "SELECT round(loss, 2) AS r, (-0.0)::FLOAT AS z FROM samples ORDER BY sample_id LIMIT 3")
    for row in rows:
        assert row["r"] == round(row["r"], 2) and len(repr(row["r"])) <= 5 and str(row["z"]) in ("0.0", "-0.0")
    text = cli("sql", "--db", digits_db, "SELECT (-0.0)::DOUBLE AS z").stdout
    assert "-0" not in text


def test_the_typical_confusion_query_breaks_ties_by_name(digits_copy):
    import re

    import saliencydb.demo as demo  # the query is the one the demo prints

    src = open(demo.__file__).read()
    query = re.search(r'sql --db \{result.db\} \\"(.*?)\\""', src).group(1)
    cli("clusters", "--db", digits_copy, "--n-clusters", 3)
    first = jcli("sql", "--db", digits_copy, query)
    again = jcli("sql", "--db", digits_copy, query)
    assert first == again and first
    pairs = jcli("sql", "--db", digits_copy, "SELECT cluster, confusion, count(*) AS k FROM clusters JOIN samples "
                                             "USING (sample_id) GROUP BY ALL")
    for row in first:
        mine = [p for p in pairs if p["cluster"] == row["cluster"]]
        top = max(p["k"] for p in mine)
        assert row["typical"] == min(p["confusion"] for p in mine if p["k"] == top)
