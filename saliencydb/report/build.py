"""Gather what a database found and render it as one self-contained HTML page."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import numpy as np

from ..errors import QueryError, SaliencyDBError
from ..storage import fixed_list_to_numpy, iter_part_batches
from ..progress import NullProgress
from ..query import open as open_db
from ..saliency import UnitLayout
from .images import Thumbnails, overlay, png_data_uri
from .plots import BLUE, GREEN, GREY, RED, profile_plot
from .style import CSS

CLUSTER_THUMBS = 12  # members shown per error group, nearest the centre first
NEIGHBORS = 5  # neighbours shown per mistake and space
TOP_PAIRS = 3
TOP_UNITS = 5
INPUT_MAPS = 8  # mistakes that get an input-space map
THUMB = 84  # thumbnail side (px)
BIG = 112  # side of a mistake's own picture
SPACES = ("saliency", "feature")
SPACE_TITLE = {"saliency": "Saliency neighbours", "feature": "Feature neighbours"}
ARROW = "\u2192"


def write_report(db_path, out_path, *, progress=None, max_mistakes: int = 40) -> Path:
    """Write a self-contained HTML report of the database at ``db_path`` to ``out_path``.

    Every picture is embedded as a PNG data URI and the style sheet is inline: the file opens from
    disk in any browser, with no scripts and no other files. It is written to a temporary file next
    to ``out_path`` and renamed over it, so readers never see half a report. Returns ``out_path``.
    """
    if isinstance(max_mistakes, bool) or not isinstance(max_mistakes, int) or max_mistakes < 0:
        raise QueryError(f"max_mistakes must be a non-negative integer, got {max_mistakes!r}")
    progress = progress or NullProgress()
    out = Path(out_path)
    with open_db(db_path) as db:
        page = _Report(db, progress, max_mistakes).render()
    _write_atomically(out, page)
    return out


def _write_atomically(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- small HTML helpers ---------------------------------------------------------------------
def _e(v) -> str:
    return escape(str(v), quote=True)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _attrs(**kw) -> str:
    return "".join(f' {k.replace("_", "-")}="{_e(v)}"' for k, v in kw.items() if v is not None)


def _pair(label, pred) -> str:
    return f"{label}{ARROW}{pred}"


@dataclass
class Sample:
    sample_id: int
    split: str
    key: str
    label_name: str
    pred_name: str
    correct: bool
    similarity: float | None = None
    pred_conf: float | None = None
    extra: dict = field(default_factory=dict)


_SAMPLE_COLS = "s.sample_id, s.split, s.key, coalesce(s.label_name, s.label::VARCHAR), coalesce(s.pred_name, s.pred::VARCHAR), s.correct"


def _sample(row) -> Sample:
    return Sample(int(row[0]), row[1], row[2], row[3], row[4], bool(row[5]))


class _Report:
    def __init__(self, db, progress, max_mistakes: int):
        self.db = db
        self.m = db.manifest
        self.progress = progress
        self.max_mistakes = max_mistakes
        self.thumbs = Thumbnails(self.m)
        self.layout = UnitLayout.from_dict(self.m.units)
        self.has_stats = self.m.stats is not None

    def q(self, sql: str, params: list | None = None) -> list[tuple]:
        return self.db.con.execute(sql, params or []).fetchall()

    # -- pieces ------------------------------------------------------------------------------
    def thumb(self, s: Sample, *, role: str, side: int = THUMB, caption_extra: str | None = None, **data) -> str:
        uri, w, h = self.thumbs.get(s.sample_id, s.split, s.key, side)
        status = "ok" if s.correct else "bad"
        tip = f"#{s.sample_id} {s.key} ({s.split}): true {s.label_name}, predicted {s.pred_name}"
        if s.similarity is not None:
            tip += f", cosine similarity {s.similarity:.3f}"
        img = (f'<img src="{uri}" width="{w}" height="{h}" alt="{_e(_pair(s.label_name, s.pred_name))}" title="{_e(tip)}"'
               f'{_attrs(data_role=role, data_sample=s.sample_id, **{f"data_{k}": v for k, v in data.items()})}>')
        extra = f'<span class="sub">{_e(caption_extra)}</span>' if caption_extra else ""
        return (f'<figure class="t {status}" style="--side:{side}px"><div class="frame">{img}</div>'
                f'<figcaption><span class="pair">{_e(_pair(s.label_name, s.pred_name))}</span>{extra}</figcaption></figure>')

    # -- header ------------------------------------------------------------------------------
    def overview(self) -> dict:
        rows = self.q("SELECT split, count(*), avg(correct::INT), sum((NOT correct)::INT) FROM samples GROUP BY split ORDER BY split")
        splits = {r[0]: {"samples": int(r[1]), "accuracy": float(r[2]), "mistakes": int(r[3])} for r in rows}
        total = sum(v["samples"] for v in splits.values())
        mistakes = sum(v["mistakes"] for v in splits.values())
        return {"splits": splits, "samples": total, "mistakes": mistakes,
                "accuracy": (total - mistakes) / total if total else None}

    def shared(self) -> dict | None:
        """Share of misclassified samples among each sample's knn neighbours, averaged per (space, query correctness)."""
        rows = self.q(
            """WITH per AS (
                 SELECT k.sample_id, k.space, avg((NOT n.correct)::DOUBLE) AS share, count(*) AS k
                 FROM knn k JOIN samples n ON n.sample_id = k.neighbor_id GROUP BY k.sample_id, k.space)
               SELECT per.space, q.correct, count(*) AS queries, avg(per.share) AS share, max(per.k) AS k
               FROM per JOIN samples q USING (sample_id) GROUP BY per.space, q.correct ORDER BY per.space, q.correct"""
        )
        if not rows:
            return None
        out: dict = {"k": max(int(r[4]) for r in rows), "spaces": {}}
        for space, correct, n, share, _ in rows:
            out["spaces"].setdefault(space, {})["correct" if correct else "incorrect"] = {"n": int(n), "share": float(share)}
        return out

    def header_html(self, ov: dict, shared: dict | None) -> str:
        m = self.m
        model = m.model
        weights = Path(model["weights"]).name if model.get("weights") else "built in"
        n_classes = model.get("num_classes")
        tiles = [
            (f"{ov['samples']:,}", "samples" + (f" in {len(ov['splits'])} splits" if len(ov["splits"]) > 1 else ""), None),
            (_pct(ov["accuracy"]), "accuracy", None),
            (f"{ov['mistakes']:,}", "mistakes", "bad"),
        ]
        lede_shared = ""
        if shared and "saliency" in shared["spaces"] and "incorrect" in shared["spaces"]["saliency"]:
            sal = shared["spaces"]["saliency"]["incorrect"]["share"]
            tiles.append((_pct(sal), f"of a mistake's {shared['k']} saliency neighbours are mistakes too", "bad"))
            feat = shared["spaces"].get("feature", {}).get("incorrect", {}).get("share")
            base = 1 - ov["accuracy"] if ov["accuracy"] is not None else None
            if feat is not None:
                ratio = f"{sal / feat:.1f}× as often as" if feat > 0 else "while never"
                lede_shared = (f"<p class=\"lede\">The saliency neighbours of a mistake are mistakes <b>{_pct(sal)}</b> of the time, "
                               f"{ratio} its neighbours by the model's own features ({_pct(feat)}); "
                               f"the overall error rate is {_pct(base)}."
                               + (" Samples that lean on the same filters tend to fail together." if sal > feat else "") + "</p>")
        tiles_html = "".join(f'<div class="tile {cls or ""}"><div class="v">{_e(v)}</div><div class="l">{_e(label)}</div></div>'
                             for v, label, cls in tiles)
        split_rows = "".join(
            f"<tr><td>{_e(name)}</td><td class=\"mono\">{_e(m.splits.get(name, {}).get('source', '?'))}</td>"
            f"<td class=\"num\">{v['samples']:,}</td><td class=\"num\">{_pct(v['accuracy'])}</td><td class=\"num\">{v['mistakes']:,}</td></tr>"
            for name, v in ov["splits"].items()
        ) or '<tr><td colspan="5" class="muted">no samples yet</td></tr>'
        shared_html = self.shared_table(shared, ov)
        n_layers = len(self.layout.layers)
        return f"""
<header id="overview">
  <div class="kicker">saliencydb report</div>
  <h1>What the database found</h1>
  <p class="meta"><span class="mono">{_e(model['spec'])}</span> · weights <span class="mono">{_e(weights)}</span> ·
     {n_classes} classes · {m.n_units:,} filters in {n_layers} conv layers · database <span class="mono">{_e(self.db.path)}</span>
     (commit {m.commit}) · generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>
  <p class="lede">For every sample the database stores its <b>saliency profile</b>: how hard the sample's loss gradient pulls on each
     convolution filter of the model, as a z-score against all samples. A mistake usually leans abnormally hard on a few filters,
     and samples that break the same filters tend to make the same mistakes (Levin et al., NeurIPS 2022).</p>
  <div class="tiles">{tiles_html}</div>
  {lede_shared}
  <div class="two">
    <div><h3>Splits</h3>
      <table class="data"><thead><tr><th>split</th><th>source</th><th class="num">samples</th><th class="num">accuracy</th>
      <th class="num">mistakes</th></tr></thead><tbody>{split_rows}</tbody></table></div>
    <div>{shared_html}</div>
  </div>
  <nav class="toc"><a href="#groups">Error groups</a><a href="#mistakes">Mistakes and their neighbours</a><a href="#profiles">Profiles</a></nav>
</header>"""

    def shared_table(self, shared: dict | None, ov: dict) -> str:
        if not shared:
            return ('<h3>Shared mistakes</h3><p class="note">The neighbour graph (<span class="mono">knn</span> table) is empty: run '
                    f'<span class="mono">saliencydb mistakes --db {_e(self.db.path)}</span> to measure how often the neighbours of a '
                    'mistake are mistakes too.</p>')
        rows = []
        for space in sorted(shared["spaces"], key=lambda s: SPACES.index(s) if s in SPACES else len(SPACES)):
            e = shared["spaces"][space]
            cells = []
            for group in ("incorrect", "correct"):
                v = e.get(group)
                cells.append(f'<td class="num" data-stat="share-misclassified" data-space="{_e(space)}" data-query="{group}">'
                             f'{_pct(v["share"]) if v else "–"}</td>')
            rows.append(f"<tr><td>{_e(space)}</td>{''.join(cells)}</tr>")
        return f"""<h3>Shared mistakes</h3>
      <table class="data"><thead><tr><th>neighbours by</th><th class="num">misclassified among<br>neighbours of mistakes</th>
      <th class="num">misclassified among<br>neighbours of correct samples</th></tr></thead><tbody>{''.join(rows)}</tbody></table>
      <p class="small muted">Each sample's {shared['k']} nearest neighbours within its split, from the <span class="mono">knn</span> table;
      shares averaged over samples.</p>"""

    # -- error groups ------------------------------------------------------------------------
    def groups(self) -> tuple[str | None, list[dict], int]:
        runs = self.q("SELECT run, count(*) FROM clusters GROUP BY run ORDER BY run")
        if not runs:
            return None, [], 0
        run = runs[0][0]
        sizes = self.q("SELECT cluster, count(*) AS n FROM clusters WHERE run = ? GROUP BY cluster ORDER BY n DESC, cluster", [run])
        pairs = self.q(
            """SELECT c.cluster, coalesce(s.label_name, s.label::VARCHAR), coalesce(s.pred_name, s.pred::VARCHAR), count(*) AS n
               FROM clusters c JOIN samples s USING (sample_id) WHERE c.run = ?
               GROUP BY ALL ORDER BY c.cluster, n DESC, 2, 3""", [run])
        blame = self.q("SELECT cluster, layer, channel, mean_z FROM blame WHERE run = ? AND rank <= ? ORDER BY cluster, rank",
                       [run, TOP_UNITS])
        members = self.q(
            f"""SELECT c.cluster, c.distance, {_SAMPLE_COLS}
                FROM (SELECT *, row_number() OVER (PARTITION BY cluster ORDER BY distance, sample_id) AS pos
                      FROM clusters WHERE run = ?) c
                JOIN samples s USING (sample_id) WHERE c.pos <= ? ORDER BY c.cluster, c.pos""", [run, CLUSTER_THUMBS])
        groups = {c: {"cluster": int(c), "size": int(n), "pairs": [], "units": [], "members": []} for c, n in sizes}
        for c, label, pred, n in pairs:
            if len(groups[c]["pairs"]) < TOP_PAIRS:
                groups[c]["pairs"].append((label, pred, int(n)))
        for c, layer, channel, z in blame:
            if c in groups:
                groups[c]["units"].append((layer, int(channel), float(z)))
        for row in members:
            s = _sample(row[2:])
            s.similarity = 1.0 - float(row[1])
            groups[row[0]]["members"].append(s)
        return run, list(groups.values()), int(runs[0][1])

    def groups_html(self, run: str | None, groups: list[dict], n: int) -> str:
        intro = ("Mistakes grouped by k-means on their standardised profiles: each group is a set of samples that lean on the same "
                 "filters. For each group: how many samples it holds, its most common confusions (true→predicted), the filters it "
                 "blames most (the group's mean z-score, layer[channel]) and up to "
                 f"{CLUSTER_THUMBS} members, nearest the group's centre first. Borders: "
                 '<span class="key bad">misclassified</span> <span class="key ok">correct</span>.')
        if run is None:
            return (f'<section id="groups"><h2>Error groups</h2><p class="lede">{intro}</p><p class="note">No error groups yet: run '
                    f'<span class="mono">saliencydb clusters --db {_e(self.db.path)}</span> to group the mistakes by profile.</p></section>')
        task = self.progress.task("report: error groups", len(groups), unit="groups")
        cards = []
        zmax = max([abs(z) for g in groups for _, _, z in g["units"]] + [1e-9])  # one scale for all groups
        for g in groups:
            pairs = "".join(f'<li><span class="pair">{_e(_pair(a, b))}</span><span class="count">×{k}</span>'
                            f'<span class="muted">{k / g["size"]:.0%}</span></li>' for a, b, k in g["pairs"])
            units = "".join(
                f'<tr><td class="mono">{_e(layer)}[{ch}]</td><td class="barcell"><span class="bar" style="width:{max(2, 100 * abs(z) / zmax):.0f}%">'
                f'</span></td><td class="num">{z:+.2f}</td></tr>' for layer, ch, z in g["units"])
            units_html = (f'<table class="units"><tbody>{units}</tbody></table>' if units
                          else '<p class="muted small">no blame table for this run</p>')
            thumbs = "".join(self.thumb(s, role="cluster-member", cluster=g["cluster"]) for s in g["members"])
            more = g["size"] - len(g["members"])
            more_html = f'<div class="more">+{more:,} more</div>' if more > 0 else ""
            cards.append(f"""
<div class="group" id="group-{g['cluster']}" data-cluster="{g['cluster']}" data-size="{g['size']}">
  <div class="ghead"><h3>Group {g['cluster']}</h3><span class="pill">{g['size']:,} sample{'s' if g['size'] != 1 else ''}</span></div>
  <div class="gbody">
    <div class="gfacts">
      <div><h4>Top confusions</h4><ul class="pairs">{pairs}</ul></div>
      <div><h4>Most blamed filters <span class="muted">(mean z)</span></h4>{units_html}</div>
    </div>
    <div class="grid">{thumbs}{more_html}</div>
  </div>
</div>""")
            task.advance(1)
        task.close()
        return (f'<section id="groups"><h2>Error groups</h2><p class="lede">{intro}</p>'
                f'<p class="small muted">{n:,} samples in {len(groups)} groups · run <span class="mono">{_e(run)}</span></p>'
                f'{"".join(cards)}</section>')

    # -- mistakes ----------------------------------------------------------------------------
    def mistakes(self) -> list[Sample]:
        rows = self.q(f"""SELECT {_SAMPLE_COLS}, s.pred_conf, s.true_conf, s.loss, s.label FROM samples s WHERE NOT s.correct
                          ORDER BY s.pred_conf DESC, s.sample_id LIMIT ?""", [self.max_mistakes])
        out = []
        for r in rows:
            s = _sample(r)
            s.pred_conf = float(r[6])
            s.extra = {"true_conf": float(r[7]), "loss": float(r[8]), "label": int(r[9])}
            out.append(s)
        return out

    def neighbours(self, queries: list[Sample]) -> tuple[dict, list[str], set[int]]:
        """{(query id, space): [Sample]} from the knn table (ranks 1..5), searched where the table lacks a query."""
        found: dict[tuple[int, str], list[Sample]] = {}
        if queries:
            rows = self.q(
                f"""SELECT k.sample_id, k.space, k.similarity, {_SAMPLE_COLS}
                    FROM knn k JOIN samples s ON s.sample_id = k.neighbor_id
                    WHERE k.rank <= ? AND k.sample_id IN (SELECT unnest(?::BIGINT[]))
                    ORDER BY k.sample_id, k.space, k.rank""", [NEIGHBORS, [s.sample_id for s in queries]])
            for r in rows:
                s = _sample(r[3:])
                s.similarity = float(r[2])
                found.setdefault((int(r[0]), r[1]), []).append(s)
        in_knn = {q for q, _ in found}
        spaces = sorted({sp for _, sp in found} | set(self.m.indexes), key=lambda s: SPACES.index(s) if s in SPACES else 99)
        searched = set()
        for q in queries:
            if q.sample_id in in_knn:
                continue
            for space in spaces:
                if space not in self.m.indexes:
                    continue
                pool = self.m.rows(q.split) - 1
                if pool < 1:
                    continue
                try:
                    res = self.db.neighbors(q.sample_id, k=min(NEIGHBORS, pool), space=space, split=q.split)
                except SaliencyDBError:
                    continue
                found[(q.sample_id, space)] = [
                    Sample(r["sample_id"], r["split"], r["key"], r["label_name"] or str(r["label"]),
                           r["pred_name"] or str(r["pred"]), bool(r["correct"]), similarity=r["similarity"])
                    for r in res.neighbors]
                searched.add(q.sample_id)
        return found, spaces, searched

    def input_maps(self, queries: list[Sample]) -> tuple[dict[int, str], str | None]:
        """{sample id: data URI of its input-space map}, or a note saying why there are none."""
        if not queries:
            return {}, None
        try:
            from ..saliency.input_space import input_saliency
        except ImportError:
            return {}, "Input-space maps are not available in this version of saliencydb."
        if not self.has_stats:
            return {}, "Input-space maps need the database's frozen statistics, which it does not have yet."
        import torch

        from ..data import Transform
        from ..models.stored import load_stored_model

        task = self.progress.task("report: input-space maps", len(queries))
        try:
            model = load_stored_model(self.m).module
            transform = Transform.from_dict(self.m.model["transform"])
            mean, std = self.db.stats
            xs, ys, ids = [], [], []
            for q in queries:
                img = self.thumbs.image(q.split, q.key)
                if img is None:
                    continue
                xs.append(transform(img))
                ys.append(q.extra["label"])
                ids.append(q.sample_id)
            if not xs:
                return {}, "Input-space maps need the images, which could not be read."
            x = torch.stack(xs)
            maps = []
            for i in range(len(ids)):  # one at a time, to report progress
                maps.append(input_saliency(model, x[i:i + 1], torch.tensor(ys[i:i + 1]), mean, std, aggregate=self.m.aggregate)[0].numpy())
                task.advance(1)
        except (SaliencyDBError, OSError, RuntimeError, ValueError) as e:
            return {}, f"Input-space maps could not be computed: {' '.join(str(e).split())[:300]}"
        finally:
            task.close()
        t = transform
        return {sid: png_data_uri(overlay(x[i].numpy(), maps[i], t.mean, t.std, BIG)) for i, sid in enumerate(ids)}, None

    def mistakes_html(self, ov: dict) -> str:
        mistakes = self.mistakes()
        n_all = ov["mistakes"]
        intro = (f"The model's most confident mistakes ({len(mistakes)} of {n_all:,}). Next to each: its {NEIGHBORS} nearest "
                 "neighbours by saliency profile and, as a baseline, by the model's own features (the input of its last layer). "
                 "Feature neighbours are samples the model represents alike; saliency neighbours are samples whose loss leans "
                 "on the same filters, so they tend to fail the same way, even when they look different. Borders: "
                 '<span class="key bad">misclassified</span> <span class="key ok">correct</span>; hover a picture for its id.')
        if not mistakes:
            return (f'<section id="mistakes"><h2>Mistakes and their neighbours</h2>'
                    f'<p class="note">{"No mistakes in the database." if n_all == 0 else "No mistakes shown (max_mistakes=0)."}</p></section>')
        nbrs, spaces, searched = self.neighbours(mistakes)
        knn_rows = self.q("SELECT count(*) FROM knn")[0][0] > 0
        maps, maps_note = self.input_maps(mistakes[:INPUT_MAPS])
        task = self.progress.task("report: mistakes", len(mistakes))
        cards = []
        for q in mistakes:
            pics = self.thumb(q, role="mistake", side=BIG)
            if q.sample_id in maps:
                tip = f"#{q.sample_id}: pixels that drive its most salient filters"
                pics += (f'<figure class="t map" style="--side:{BIG}px"><div class="frame"><img src="{maps[q.sample_id]}" width="{BIG}" '
                         f'height="{BIG}" alt="input-space saliency" title="{_e(tip)}"'
                         f' data-role="input-saliency" data-sample="{q.sample_id}"></div>'
                         f'<figcaption><span class="sub">input saliency</span></figcaption></figure>')
            facts = (f'<div class="qfacts"><div class="big">true <b>{_e(q.label_name)}</b>, predicted '
                     f'<b class="red">{_e(q.pred_name)}</b></div><div>confidence {_pct(q.pred_conf)}'
                     f' · true class {_pct(q.extra["true_conf"])}</div>'
                     f'<div class="muted small">#{q.sample_id} · <span class="mono">{_e(q.key)}</span> · {_e(q.split)} · '
                     f'loss {q.extra["loss"]:.2f}</div></div>')
            sides = []
            for space in spaces:
                got = nbrs.get((q.sample_id, space))
                if got is None:
                    sides.append(f'<div class="nside"><h4>{_e(SPACE_TITLE.get(space, space))}</h4><p class="muted small">none</p></div>')
                    continue
                bad = sum(not s.correct for s in got)
                same = sum(s.label_name == q.label_name and s.pred_name == q.pred_name for s in got)
                share = (f'<span class="share {"hi" if bad * 2 > len(got) else "mid" if bad else "zero"}" data-sample="{q.sample_id}" data-space="{_e(space)}"'
                         f' data-misclassified="{bad}" data-k="{len(got)}">{bad} of {len(got)} misclassified</span>')
                same_html = f'<span class="muted small">{same} same confusion</span>' if same else ""
                thumbs = "".join(self.thumb(s, role="neighbor", caption_extra=f"{s.similarity:.2f}", space=space, query=q.sample_id)
                                 for s in got)
                sides.append(f'<div class="nside"><h4>{_e(SPACE_TITLE.get(space, space))} {share} {same_html}</h4>'
                             f'<div class="grid">{thumbs}</div></div>')
            partial = q.sample_id in searched and knn_rows  # say so per mistake only when the table holds others
            src_html = '<div class="muted small">neighbours searched: not in the knn table</div>' if partial else ""
            cards.append(f"""
<article class="mistake" id="sample-{q.sample_id}">
  <div class="query"><div class="pics">{pics}</div>{facts}{src_html}</div>
  <div class="nbrs">{''.join(sides) or '<p class="note">No vector index to find neighbours in.</p>'}</div>
</article>""")
            task.advance(1)
        task.close()
        notes = []
        if maps:
            notes.append(f'<p class="small muted">The first {len(maps)} mistakes also show an <b>input-space saliency</b> map: the '
                         "pixels that drive the filters the sample leans on most (its top-10 filters boosted, the gradient taken "
                         "back to the image; brighter = more influence).</p>")
        elif maps_note:
            notes.append(f'<p class="note">{_e(maps_note)}</p>')
        if searched:
            what = "does not hold some of these mistakes" if knn_rows else "is empty"
            notes.append(f'<p class="note">The <span class="mono">knn</span> table {what}; their neighbours were searched in the '
                         'vector indexes instead, within their own split.</p>')
        return (f'<section id="mistakes"><h2>Mistakes and their neighbours</h2><p class="lede">{intro}</p>{"".join(notes)}'
                f'{"".join(cards)}</section>')

    # -- profiles ----------------------------------------------------------------------------
    def mean_profiles(self) -> dict[bool, tuple[np.ndarray, int]]:
        """Mean standardised profile of correct and of incorrect samples, read in blocks."""
        U = self.m.n_units
        sums = {True: np.zeros(U), False: np.zeros(U)}
        counts = {True: 0, False: 0}
        task = self.progress.task("report: average profiles", self.m.rows())
        for batch in iter_part_batches(self.db.path, self.m.part_files(), ["correct", "raw_profile"], 4096):
            correct = batch.column(0).to_numpy(zero_copy_only=False).astype(bool)
            rows = fixed_list_to_numpy(batch.column(1), U).astype(np.float64)
            for flag in (True, False):
                sel = correct == flag
                sums[flag] += rows[sel].sum(axis=0)
                counts[flag] += int(sel.sum())
            task.advance(batch.num_rows)
        task.close()
        mean, std = self.db.stats
        return {flag: ((sums[flag] / counts[flag] - mean) / std, counts[flag]) for flag in (True, False) if counts[flag]}

    def largest_group_profile(self) -> tuple[int, int, np.ndarray] | None:
        rows = self.q("SELECT run, cluster, count(*) AS n FROM clusters GROUP BY run, cluster ORDER BY run, n DESC, cluster LIMIT 1")
        if not rows:
            return None
        run, c, n = rows[0]
        z = self.q("SELECT unit_id, mean_z FROM blame WHERE run = ? AND cluster = ?", [run, c])
        prof = np.full(self.m.n_units, np.nan)
        if len(z) == self.m.n_units:
            for u, v in z:
                prof[u] = v
        else:  # no blame table: average the members' standardised profiles
            ids = np.array([r[0] for r in self.q("SELECT sample_id FROM clusters WHERE run = ? AND cluster = ?", [run, c])])
            mean, std = self.db.stats
            prof = ((self.db.rows("raw_profile", ids) - mean) / std).mean(axis=0)
        return int(c), int(n), prof

    def profiles_html(self) -> str:
        intro = ("Average standardised profiles (z-scores per filter). Within each layer the filters are sorted from most to least "
                 "salient, and the layers run left to right from input to output, each given the same width (as in figure 2 of "
                 "Levin et al.). A curve far above zero leans on the filters harder than the average sample does; a steep curve "
                 "means a few filters of that layer stand out.")
        if not self.has_stats or self.m.rows() == 0:
            return (f'<section id="profiles"><h2>Profiles</h2><p class="lede">{intro}</p>'
                    '<p class="note">The database has no frozen statistics yet, so profiles cannot be standardised.</p></section>')
        layers = self.layout.layers
        means = self.mean_profiles()
        task = self.progress.task("report: profile plots", 2, unit="plots")
        curves = []
        if False in means:
            curves.append((f"misclassified (n={means[False][1]:,})", means[False][0], RED, "-"))
        if True in means:
            curves.append((f"correct (n={means[True][1]:,})", means[True][0], GREEN, "-"))
        figs = [profile_plot(curves, layers, "Correct vs misclassified samples")]
        task.advance(1)
        group = self.largest_group_profile()
        if group is not None:
            c, n, prof = group
            gcurves = [(f"group {c} (n={n:,})", prof, BLUE, "-")]
            if True in means:
                gcurves.append(("correct samples", means[True][0], GREY, "--"))
            figs.append(profile_plot(gcurves, layers, f"Largest error group (group {c})"))
        task.advance(1)
        task.close()
        imgs = "".join(f'<figure class="plot"><img src="{png_data_uri(f)}" width="{f.width}" height="{f.height}" '
                       f'alt="average profile plot" data-role="plot"></figure>' for f in figs)
        note = "" if group is not None else '<p class="note">No error groups yet, so there is no largest group to plot.</p>'
        return f'<section id="profiles"><h2>Profiles</h2><p class="lede">{intro}</p><div class="plots">{imgs}</div>{note}</section>'

    # -- page --------------------------------------------------------------------------------
    def render(self) -> str:
        ov = self.overview()
        header = self.header_html(ov, self.shared())
        run, groups, n = self.groups()
        body = [header, self.groups_html(run, groups, n), self.mistakes_html(ov), self.profiles_html()]
        if self.thumbs.problems:
            items = "".join(f"<li><b>{_e(s)}</b>: {_e(p)}</li>" for s, p in sorted(self.thumbs.problems.items()))
            body.append(f'<section id="problems"><h2>Missing pictures</h2><p class="note">Some pictures are grey squares because '
                        f'their images could not be read:</p><ul class="small">{items}</ul></section>')
        title = f"saliencydb report: {Path(str(self.db.path)).name}"
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
                f'<style>{CSS}</style>\n</head>\n<body>\n<main>{"".join(body)}\n'
                f'<footer>Generated by saliencydb · parameter-space saliency after Levin et al., '
                f'“Where do models go wrong? Parameter-space saliency maps for explainability”, NeurIPS 2022.</footer>\n'
                f'</main>\n</body>\n</html>\n')
