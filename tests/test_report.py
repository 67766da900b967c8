"""The HTML report: self-contained, one picture per thing the database says, numbers equal to SQL."""

import importlib.util
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import saliencydb
from saliencydb.errors import QueryError
from saliencydb.report import write_report

ARROW = "\u2192"
HAS_INPUT_SPACE = importlib.util.find_spec("saliencydb.saliency.input_space") is not None


VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}


class _Page(HTMLParser):
    """Every start tag with its attributes; each <img> with the class of the <figure> around it;
    every element closed in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.imgs: list[dict] = []
        self._figure: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag not in VOID:
            self.open.append(tag)
        if tag == "figure":
            self._figure.append(a.get("class", ""))
        elif tag == "img":
            self.imgs.append({**a, "figure": self._figure[-1] if self._figure else ""})

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()
        if tag == "figure" and self._figure:
            self._figure.pop()


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.open == [], f"unclosed elements {page.open}"
    return page


class _Recorder:
    def __init__(self):
        self.tasks = []

    def task(self, description, total, unit="samples"):
        t = _Task(description, total)
        self.tasks.append(t)
        return t

    def log(self, message):
        pass


class _Task:
    def __init__(self, description, total):
        self.description, self.total, self.done, self.closed = description, total, 0, False

    def advance(self, n=1):
        self.done += n

    def close(self):
        self.closed = True


def _snapshot(root: Path) -> dict:
    # pins/ holds readers' shared locks on the version they read (touched by every reader)
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.relative_to(root).parts[0] != "pins"}


def _check_self_contained(text: str, page: _Page) -> None:
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("<html") == 1 and text.count("</html>") == 1 and text.rstrip().endswith("</html>")
    assert text.count("<body") == 1 and text.count("<head>") == 1
    assert "<script" not in text.lower()
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "poster", "data"):
            if name in attrs:
                value = attrs[name]
                ok = value.startswith("data:image/png;base64,") if name == "src" else value.startswith("#")
                assert ok, f"<{tag} {name}={value[:60]!r}> is not embedded"
    # no external resource through CSS either
    assert not re.search(r"url\((?!['\"]?data:)", text)
    assert "@import" not in text and "http://" not in text and "https://" not in text


def _roles(page: _Page, role: str, **match) -> list[dict]:
    return [i for i in page.imgs if i.get("data-role") == role and all(i.get(f"data-{k}") == str(v) for k, v in match.items())]


def _expected_caption(db, ids) -> dict[int, tuple[str, bool]]:
    rows = db.con.execute(
        "SELECT sample_id, label_name, pred_name, correct FROM samples WHERE sample_id IN (SELECT unnest(?::BIGINT[]))",
        [sorted({int(i) for i in ids})]).fetchall()
    return {r[0]: (f"{r[1]}{ARROW}{r[2]}", r[3]) for r in rows}


def _check_thumbnails(db, page: _Page) -> None:
    """Every sample picture is captioned label→pred and bordered by its correctness."""
    pics = [i for i in page.imgs if "data-sample" in i and i.get("data-role") != "input-saliency"]
    want = _expected_caption(db, [i["data-sample"] for i in pics])
    for img in pics:
        caption, correct = want[int(img["data-sample"])]
        assert img["alt"] == caption
        assert ("ok" if correct else "bad") in img["figure"].split()


def test_report_of_a_full_database(digits_copy, tmp_path):
    mistakes = saliencydb.open(digits_copy).mistakes(10, n_boot=50)
    saliencydb.open(digits_copy).clusters(4)
    before = _snapshot(digits_copy)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "other.txt").write_text("keep me")
    progress = _Recorder()

    got = write_report(digits_copy, out_dir / "report.html", progress=progress)

    assert got == out_dir / "report.html" and got.is_file()
    assert sorted(p.name for p in out_dir.iterdir()) == ["other.txt", "report.html"]  # no temp file left
    assert _snapshot(digits_copy) == before  # the database is not touched
    assert progress.tasks and all(t.closed for t in progress.tasks)
    text = got.read_text(encoding="utf-8")
    assert len(text.encode()) < 5_000_000
    page = _parse(text)
    _check_self_contained(text, page)

    db = saliencydb.open(digits_copy)
    # header: per-split counts and the shared-mistake shares, recomputed with SQL
    for split, n, mis in db.con.execute("SELECT split, count(*), sum((NOT correct)::INT) FROM samples GROUP BY split").fetchall():
        assert re.search(rf"<td>{split}</td><td class=\"mono\">[^<]*</td><td class=\"num\">{n:,}</td><td class=\"num\">[^<]*</td>"
                         rf"<td class=\"num\">{mis:,}</td>", text)
    want = {}
    for space, correct, share in db.con.execute(
        """SELECT per.space, q.correct, avg(per.share) FROM
             (SELECT k.sample_id, k.space, avg(CASE WHEN n.correct THEN 0.0 ELSE 1.0 END) AS share
              FROM knn k JOIN samples n ON n.sample_id = k.neighbor_id GROUP BY ALL) per
           JOIN samples q ON q.sample_id = per.sample_id GROUP BY ALL""").fetchall():
        want[(space, "correct" if correct else "incorrect")] = f"{share:.1%}"
    shown = {(sp, g): v for sp, g, v in re.findall(
        r'data-stat="share-misclassified" data-space="(\w+)" data-query="(\w+)">([^<]*)<', text)}
    assert shown == want and len(want) == 4
    # the same numbers as the mistakes report (pooled over its splits)
    for space in ("saliency", "feature"):
        parts = [e[space]["correct_neighbors_of_incorrect"] for e in mistakes["splits"].values()]
        pooled = sum((1 - p["mean"]) * p["n"] for p in parts) / sum(p["n"] for p in parts)
        assert shown[(space, "incorrect")] == f"{pooled:.1%}"
    # the baselines and the same-confusion column: the mistakes report's numbers, pooled over its splits
    base = {(b, g): v for b, g, v in re.findall(
        r'data-stat="baseline-share-misclassified" data-baseline="(\w+)" data-query="(\w+)">([^<]*)<', text)}
    assert {b for b, _ in base} == {"loss", "label", "random"}
    for name in ("loss", "label", "random"):
        parts = [e["baselines"][name]["correct_neighbors_of_incorrect"] for e in mistakes["splits"].values()]
        pooled = sum((1 - p["mean"]) * p["n"] for p in parts) / sum(p["n"] for p in parts)
        assert base[(name, "incorrect")] == f"{pooled:.1%}"
    same = dict(re.findall(r'data-stat="same-confusion" data-row="([^"]+)">([^<]*)<', text))
    parts = [e["saliency"]["same_confusion_of_incorrect"] for e in mistakes["splits"].values()]
    assert same["saliency"] == f"{sum(p['mean'] * p['n'] for p in parts) / sum(p['n'] for p in parts):.1%}"
    parts = [e["baselines"]["loss"]["same_confusion_of_incorrect"] for e in mistakes["splits"].values()]
    assert same["closest loss (baseline)"] == f"{sum(p['mean'] * p['n'] for p in parts) / sum(p['n'] for p in parts):.1%}"

    # error groups: min(12, size) members per group, nearest the centre first
    sizes = dict(db.con.execute("SELECT cluster, count(*) FROM clusters GROUP BY cluster").fetchall())
    assert len(sizes) == 4
    for c, n in sizes.items():
        members = [int(i["data-sample"]) for i in _roles(page, "cluster-member", cluster=c)]
        order = [r[0] for r in db.con.execute(
            "SELECT sample_id FROM clusters WHERE cluster = ? ORDER BY distance, sample_id LIMIT 12", [c]).fetchall()]
        assert members == order and len(members) == min(12, n)
        assert f'data-cluster="{c}" data-size="{n}"' in text
        for layer, channel, z in db.con.execute(
                "SELECT layer, channel, mean_z FROM blame WHERE cluster = ? AND rank <= 5", [c]).fetchall():
            assert f"{layer}[{channel}]</td>" in text and f"{z:+.2f}" in text
    assert len(_roles(page, "cluster-member")) == sum(min(12, n) for n in sizes.values())

    # mistakes: the 40 most confident, each with ranks 1..5 of the knn table in both spaces
    order = [r[0] for r in db.con.execute(
        "SELECT sample_id FROM samples WHERE NOT correct ORDER BY pred_conf DESC, sample_id LIMIT 40").fetchall()]
    assert [int(i["data-sample"]) for i in _roles(page, "mistake")] == order and len(order) == 40
    shares = {(int(q), sp): (int(m), int(k), t) for q, sp, m, k, t in re.findall(
        r'class="share \w+" data-sample="(\d+)" data-space="(\w+)" data-misclassified="(\d+)" data-k="(\d+)">([^<]*)<', text)}
    assert len(shares) == 2 * len(order)
    for q in order:
        for space in ("saliency", "feature"):
            rows = db.con.execute(
                """SELECT k.neighbor_id, s.correct FROM knn k JOIN samples s ON s.sample_id = k.neighbor_id
                   WHERE k.sample_id = ? AND k.space = ? AND k.rank <= 5 ORDER BY k.rank""", [q, space]).fetchall()
            assert [int(i["data-sample"]) for i in _roles(page, "neighbor", query=q, space=space)] == [r[0] for r in rows]
            bad = sum(not r[1] for r in rows)
            assert shares[(q, space)] == (bad, 5, f"{bad} of 5 misclassified")
    maps = _roles(page, "input-saliency")
    assert len(maps) == (8 if HAS_INPUT_SPACE else 0)
    assert [int(i["data-sample"]) for i in maps] == order[:len(maps)]

    plots = _roles(page, "plot")
    assert len(plots) == 2  # correct vs incorrect, and the largest group
    assert len(page.imgs) == len(_roles(page, "cluster-member")) + 40 * (1 + 2 * 5) + len(maps) + len(plots)
    _check_thumbnails(db, page)
    assert "Missing pictures" not in text


def test_report_without_knn_or_clusters(digits_copy, tmp_path):
    out = tmp_path / "r.html"
    write_report(digits_copy, out, max_mistakes=6)
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    _check_self_contained(text, page)
    assert "The neighbour graph (<span class=\"mono\">knn</span> table) is empty" in text
    assert "No error groups yet" in text
    assert 'data-stat="share-misclassified"' not in text
    assert not _roles(page, "cluster-member")
    db = saliencydb.open(digits_copy)
    mistakes = db.con.execute(
        "SELECT sample_id, split FROM samples WHERE NOT correct ORDER BY pred_conf DESC, sample_id LIMIT 6").fetchall()
    assert [int(i["data-sample"]) for i in _roles(page, "mistake")] == [m[0] for m in mistakes]
    # neighbours searched in the indexes instead, within the mistake's split
    assert "table is empty; their neighbours were searched in the vector indexes instead" in text
    for q, split in mistakes:
        for space in ("saliency", "feature"):
            want = db.neighbors(q, k=5, space=space, split=split)
            shown = _roles(page, "neighbor", query=q, space=space)
            assert [int(i["data-sample"]) for i in shown] == [r["sample_id"] for r in want.neighbors]
            bad = round(want.summary["share_misclassified"] * 5)
            assert f'data-sample="{q}" data-space="{space}" data-misclassified="{bad}" data-k="5">{bad} of 5 misclassified<' in text
    assert len(_roles(page, "plot")) == 1  # no largest group to plot
    assert "No error groups yet, so there is no largest group to plot" in text
    _check_thumbnails(db, page)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "r.html"]


def test_report_when_images_cannot_be_read(digits_copy, tmp_path):
    manifest = digits_copy / "manifest.json"
    m = json.loads(manifest.read_text())
    for split in m["splits"].values():
        split["source"] = f"imagefolder:{tmp_path / 'gone'}"
    manifest.write_text(json.dumps(m))
    out = write_report(digits_copy, tmp_path / "r.html", max_mistakes=3)
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    _check_self_contained(text, page)
    assert "Missing pictures" in text and "gone" in text
    assert len(_roles(page, "mistake")) == 3  # grey squares stand in for the pictures
    assert not _roles(page, "input-saliency")


def test_report_is_replaced_atomically(digits_copy, tmp_path, monkeypatch):
    import saliencydb.report.build as build

    out = tmp_path / "report.html"
    out.write_text("old report")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(build.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(digits_copy, out, max_mistakes=1)
    assert out.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "report.html"]  # the temp file is gone
    monkeypatch.undo()
    write_report(digits_copy, out, max_mistakes=0)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "No mistakes shown (max_mistakes=0)" in out.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "report.html"]


@pytest.mark.parametrize("bad", [-1, 2.5, True, "40"])
def test_report_rejects_a_bad_max_mistakes(digits_db, tmp_path, bad):
    with pytest.raises(QueryError, match="max_mistakes"):
        write_report(digits_db, tmp_path / "r.html", max_mistakes=bad)
    assert not (tmp_path / "r.html").exists()
