"""Gather what the report shows from an open ``query.Database``: counts and tables by SQL, the
neighbours of the mistakes, their pictures (read from the splits' data sources) and input-space
maps (from the stored model), and the average profiles. Returns ``data.ReportData``; no HTML."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import SaliencyDBError
from ..progress import NullProgress
from ..query.baselines import baseline_shares
from ..query.lists import neighbor_lists
from ..saliency import UnitLayout
from ..saliency.normalise import prescale
from .data import (CLUSTER_THUMBS, NEIGHBORS, About, ErrorGroup, ErrorGroups, GroupProfile, Mistake, Mistakes, Overview,
                   Picture, Profiles, ReportData, Sample, Share, SharedMistakes, SplitCounts, space_order)
from .images import Thumbnails, overlay, png_data_uri

TOP_PAIRS = 3
TOP_UNITS = 5
INPUT_MAPS = 8  # mistakes that get an input-space map
THUMB = 84  # thumbnail side (px)
BIG = 112  # side of a mistake's own picture

_SAMPLE_COLS = "s.sample_id, s.split, s.key, coalesce(s.label_name, s.label::VARCHAR), coalesce(s.pred_name, s.pred::VARCHAR), s.correct"


def gather(db, *, progress=None, max_mistakes: int = 40, channel_reduce: str = "max-abs") -> ReportData:
    """Everything the report of ``db`` shows, its ``max_mistakes`` most confident mistakes included; their input-space
    maps reduce a pixel's colour channels by ``channel_reduce`` (``saliency.input_space.reduce_channels``)."""
    return _Gatherer(db, progress or NullProgress(), max_mistakes, channel_reduce).gather()


def _sample(row) -> Sample:
    return Sample(int(row[0]), row[1], row[2], row[3], row[4], bool(row[5]))


class _Gatherer:
    def __init__(self, db, progress, max_mistakes: int, channel_reduce: str = "max-abs"):
        self.db = db
        self.channel_reduce = channel_reduce
        self.m = db.manifest
        self.progress = progress
        self.max_mistakes = max_mistakes
        self.thumbs = Thumbnails(self.m)
        self.layout = UnitLayout.from_dict(self.m.units)
        self.has_stats = self.m.stats is not None

    def q(self, sql: str, params: list | None = None) -> list[tuple]:
        return self.db._execute(sql, params or []).fetchall()

    def picture(self, s: Sample, side: int) -> Picture:
        got = self.thumbs.get(s.sample_id, s.split, s.key, side)
        if isinstance(got, str):  # a sentence: shown as text
            return Picture("", 0, 0, side, text=got)
        uri, w, h = got
        return Picture(uri, w, h, side)

    def gather(self) -> ReportData:
        """In the order the pictures were always read (the first problem met per split is the one named)."""
        overview = self.overview()
        shared = self.shared()
        about = self.about()
        groups = self.groups()
        mistakes = self.mistakes(overview.mistakes)
        profiles = self.profiles()
        absent = {space: self.m.no_features_reason for space in ("feature",) if space not in self.db.spaces}
        return ReportData(about, overview, shared, groups, mistakes, profiles, dict(self.thumbs.problems), absent)

    # -- header ------------------------------------------------------------------------------
    def about(self) -> About:
        model = self.m.model
        return About(db_path=str(self.db.path), commit=self.m.commit, model_spec=model.spec,
                     weights=Path(model.weights).name if model.weights else "built in",
                     n_classes=model.num_classes, n_units=self.m.n_units, n_layers=len(self.layout.layers),
                     generated=datetime.now(timezone.utc))

    def overview(self) -> Overview:
        rows = self.q("SELECT split, count(*), avg(correct::INT), sum((NOT correct)::INT) FROM samples GROUP BY split ORDER BY split")
        splits = {r[0]: SplitCounts(self.m.splits[r[0]].source if r[0] in self.m.splits else "?", int(r[1]), float(r[2]), int(r[3]))
                  for r in rows}
        total = sum(v.samples for v in splits.values())
        mistakes = sum(v.mistakes for v in splits.values())
        return Overview(splits, total, mistakes, (total - mistakes) / total if total else None)

    def shared(self) -> SharedMistakes | None:
        """Share of misclassified samples among each sample's knn neighbours, averaged per (space, query correctness)."""
        rows = self.q(
            """WITH per AS (
                 SELECT k.sample_id, k.space, avg((NOT n.correct)::DOUBLE) AS share, count(*) AS k,
                        avg((n.label = q.label AND n.pred = q.pred)::DOUBLE) AS same
                 FROM knn k JOIN samples n ON n.sample_id = k.neighbor_id JOIN samples q ON q.sample_id = k.sample_id
                 GROUP BY k.sample_id, k.space)
               SELECT per.space, q.correct, count(*) AS queries, avg(per.share) AS share, max(per.k) AS k, avg(per.same)
               FROM per JOIN samples q USING (sample_id) GROUP BY per.space, q.correct ORDER BY per.space, q.correct"""
        )
        if not rows:
            return None
        out = SharedMistakes(max(int(r[4]) for r in rows), {})
        for space, correct, n, share, _, same in rows:
            out.spaces.setdefault(space, {})["correct" if correct else "incorrect"] = Share(
                int(n), float(share), None if correct else float(same))
        out.baselines = self.baselines(out.k)
        return out

    def baselines(self, k: int) -> dict[str, dict[str, Share]]:
        """The same shares for neighbours chosen without the profile (``query.baselines``), within each
        split that the knn table covers, averaged over its samples."""
        per: dict[str, dict[bool, list]] = {}
        splits = [r[0] for r in self.q("SELECT DISTINCT s.split FROM knn k JOIN samples s USING (sample_id) ORDER BY 1")]
        for split in splits:
            meta = self.db._execute("SELECT correct, label, pred, loss FROM samples WHERE split = ? ORDER BY sample_id",
                                       [split]).fetchnumpy()
            correct = np.asarray(meta["correct"], dtype=bool)
            for name, (share_correct, same) in baseline_shares(correct, np.asarray(meta["label"]), np.asarray(meta["pred"]),
                                                               np.asarray(meta["loss"], dtype=np.float64), k).items():
                for group in (True, False):
                    sel = (correct == group) & ~np.isnan(share_correct)
                    per.setdefault(name, {}).setdefault(group, []).append((1 - share_correct[sel], same[sel]))
        out: dict[str, dict[str, Share]] = {}
        for name, groups in per.items():
            for group, parts in groups.items():
                wrong = np.concatenate([w for w, _ in parts])
                same = np.concatenate([s for _, s in parts])
                if len(wrong):
                    out.setdefault(name, {})["correct" if group else "incorrect"] = Share(
                        len(wrong), float(wrong.mean()), None if group else float(same.mean()))
        return out

    # -- error groups ------------------------------------------------------------------------
    def groups(self) -> ErrorGroups:
        runs = self.q("SELECT run, count(*) FROM clusters GROUP BY run ORDER BY run")
        if not runs:
            return ErrorGroups(None, 0)
        run = runs[0][0]
        sizes = self.q("SELECT cluster, count(*) AS n FROM clusters WHERE run = ? GROUP BY cluster ORDER BY n DESC, cluster", [run])
        groups = {c: ErrorGroup(int(c), int(n), [], [], []) for c, n in sizes}
        self.group_facts(run, groups)
        task = self.progress.task("report: error groups", len(groups), unit="groups")
        for g in groups.values():
            for s in g.members:
                s.picture = self.picture(s, THUMB)
            task.advance(1)
        task.close()
        return ErrorGroups(run, int(runs[0][1]), list(groups.values()))

    def group_facts(self, run: str, groups: dict) -> None:
        """Each group's top confusions, most blamed filters and members nearest its centre."""
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
        for c, label, pred, n in pairs:
            if len(groups[c].pairs) < TOP_PAIRS:
                groups[c].pairs.append((label, pred, int(n)))
        for c, layer, channel, z in blame:
            if c in groups:
                groups[c].units.append((layer, int(channel), float(z)))
        for row in members:
            s = _sample(row[2:])
            s.similarity = 1.0 - float(row[1])
            groups[row[0]].members.append(s)

    # -- mistakes ----------------------------------------------------------------------------
    def mistakes(self, total: int) -> Mistakes:
        rows = self.q(f"""SELECT {_SAMPLE_COLS}, s.pred_conf, s.true_conf, s.loss, s.label FROM samples s WHERE NOT s.correct
                          ORDER BY s.pred_conf DESC, s.sample_id LIMIT ?""", [self.max_mistakes])
        shown = [Mistake(_sample(r), int(r[9]), float(r[6]), float(r[7]), float(r[8])) for r in rows]
        if not shown:
            return Mistakes(total, shown)
        found = neighbor_lists(self.db, [q.sample.sample_id for q in shown], NEIGHBORS)
        spaces = sorted(found.spaces | set(self.m.indexes), key=space_order)
        nbrs = self.neighbor_samples(found)
        knn_rows = self.q("SELECT count(*) FROM knn")[0][0] > 0
        maps_note = self.input_maps(shown[:INPUT_MAPS])
        task = self.progress.task("report: mistakes", len(shown))
        for q in shown:
            q.sample.picture = self.picture(q.sample, BIG)
            q.searched = q.sample.sample_id in found.searched
            for space in spaces:
                got = nbrs.get((q.sample.sample_id, space))
                if got is not None:
                    for s in got:
                        s.picture = self.picture(s, THUMB)
                    q.neighbors[space] = got
            task.advance(1)
        task.close()
        return Mistakes(total, shown, spaces, knn_rows, maps_note, self.channel_reduce)

    def neighbor_samples(self, found) -> dict[tuple[int, str], list[Sample]]:
        """The neighbour lists as samples. A name missing from the knn table's join falls back to the class index as SQL's
        coalesce does (an empty name is kept); one of a searched list as the ``neighbors`` answer did (an empty one is not)."""
        ids = sorted({nb for got in found.lists.values() for nb, _ in got})
        meta = {r[0]: r for r in self.q(
            "SELECT sample_id, split, key, label_name, label, pred_name, pred, correct FROM samples "
            "WHERE sample_id IN (SELECT unnest(?::BIGINT[]))", [ids])} if ids else {}
        out: dict[tuple[int, str], list[Sample]] = {}
        for (qid, space), got in found.lists.items():
            name = _name_or_index if qid in found.searched else _coalesce
            out[(qid, space)] = [
                Sample(nb, meta[nb][1], meta[nb][2], name(meta[nb][3], meta[nb][4]), name(meta[nb][5], meta[nb][6]),
                       bool(meta[nb][7]), similarity=sim) for nb, sim in got]
        return out

    def input_maps(self, queries: list[Mistake]) -> str | None:
        """Give each of ``queries`` its input-space map; or a note saying why there are none."""
        if not queries:
            return None
        try:
            from ..saliency.input_space import input_saliency
        except ImportError:
            return "Input-space maps are not available in this version of saliencydb."
        if not self.has_stats:
            return "Input-space maps need the database's frozen statistics, which it does not have yet."
        if self.m.model.transform.get("kind") == "tokens":
            return ("Input-space maps are drawn for images; for a sentence's token-level saliency run "
                    "`saliencydb explain --db DB --id N --out FILE.png`.")
        import torch

        from ..data.transforms import transform_from_dict
        from ..models.stored import load_stored_model

        task = self.progress.task("report: input-space maps", len(queries))
        try:
            model = load_stored_model(self.m).module
            transform = transform_from_dict(self.m.model.transform)
            mean, std = self.db.stats
            xs, ys, shown = [], [], []
            for q in queries:
                img = self.thumbs.image(q.sample.split, q.sample.key)
                if img is None:
                    continue
                xs.append(transform(img))
                ys.append(q.label)
                shown.append(q)
            if not xs:
                return "Input-space maps need the images, which could not be read."
            x = torch.stack(xs)
            maps = []
            for i in range(len(shown)):  # one at a time, to report progress
                maps.append(input_saliency(model, x[i:i + 1], torch.tensor(ys[i:i + 1]), mean, std, aggregate=self.m.aggregate,
                                           normalisation=self.db.normalisation, layout=self.layout,
                                           channel_reduce=self.channel_reduce)[0].numpy())
                task.advance(1)
        except (SaliencyDBError, OSError, RuntimeError, ValueError) as e:
            return f"Input-space maps could not be computed: {' '.join(str(e).split())[:300]}"
        finally:
            task.close()
        for i, q in enumerate(shown):
            q.input_map = Picture(png_data_uri(overlay(x[i].numpy(), maps[i], transform.mean, transform.std, BIG)), BIG, BIG, BIG)
        return None

    # -- profiles ----------------------------------------------------------------------------
    def profiles(self) -> Profiles:
        layers = self.layout.layers
        if not self.has_stats or self.m.rows() == 0:
            return Profiles(layers, None)
        return Profiles(layers, self.mean_profiles(), self.largest_group_profile())

    def mean_profiles(self) -> dict[bool, tuple[np.ndarray, int]]:
        """Mean standardised profile of correct and of incorrect samples, read in blocks."""
        U = self.m.n_units
        sums = {True: np.zeros(U), False: np.zeros(U)}
        counts = {True: 0, False: 0}
        norm = self.db.normaliser
        correct_ids = self.db.ids_where("correct")
        task = self.progress.task("report: average profiles", self.m.rows())
        for ids, raw, dlogit in self.db.snapshot.iter_raw_profiles():
            correct = np.isin(ids, correct_ids)
            rows = prescale(raw, norm.name, dlogit)  # standardisation is affine in the prescaled profile
            for flag in (True, False):
                sel = correct == flag
                sums[flag] += rows[sel].sum(axis=0)
                counts[flag] += int(sel.sum())
            task.advance(len(ids))
        task.close()
        return {flag: ((sums[flag] / counts[flag] - norm.mean) / norm.std, counts[flag]) for flag in (True, False) if counts[flag]}

    def largest_group_profile(self) -> GroupProfile | None:
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
            prof = self.db.z(ids).astype(np.float64).mean(axis=0)
        return GroupProfile(int(c), int(n), prof)


def _coalesce(name: str | None, index: int) -> str:
    return name if name is not None else str(index)


def _name_or_index(name: str | None, index: int) -> str:
    return name or str(index)
