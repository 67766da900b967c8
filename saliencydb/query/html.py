"""HTML for Jupyter's rich display (``_repr_html_``): small tables and cards of a database and its
query results, with inline PNG thumbnails of stored samples.

A thumbnail is re-read from the sample's data source (split -> the manifest's ``source`` spec ->
``parse_data_spec``, the row found by its key). An image that cannot be read becomes a grey
square, never an exception: a display must not fail. Every string is escaped with
``html.escape`` (labels and keys come from users' files).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

THUMB = 56  # pixels on the longer side of a sample's thumbnail
PICTURE = 168  # pixels on the longer side of an explanation's pictures
PLACEHOLDER_RGB = (214, 219, 224)
STYLE = ("<style>.sdb table{border-collapse:collapse;margin:4px 0}.sdb td,.sdb th{padding:2px 8px;text-align:left;"
         "border-bottom:1px solid #ddd;vertical-align:middle}.sdb .sdb-text{display:inline-block;max-width:28em;"
         "font-family:Georgia,serif;padding:2px 6px;background:#f6f6f6;border-radius:3px}.sdb .sdb-card{display:inline-block;vertical-align:top;"
         "border:1px solid #ccc;border-radius:6px;padding:6px 10px;margin:4px;min-width:220px}"
         ".sdb .ok{color:#1a7f37}.sdb .bad{color:#cf222e}.sdb img{image-rendering:pixelated;margin:2px}</style>")


def esc(value) -> str:
    """``value`` as text safe inside HTML elements and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def wrap(body: str) -> str:
    """The HTML of one display: the shared style and the body in a ``div.sdb``."""
    return f'{STYLE}<div class="sdb">{body}</div>'


def table(header: list[str], rows: list[str]) -> str:
    """A table with escaped header cells; ``rows`` are ready ``<tr>`` elements."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def plain_row(values) -> str:
    """A table row of escaped values."""
    return "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in values) + "</tr>"


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# -- pictures -------------------------------------------------------------------------------------


def png_data_uri(img: Image.Image) -> str:
    """The image as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fit(img: Image.Image, side: int) -> Image.Image:
    """At most ``side`` pixels on the longer side; tiny images are enlarged by a whole factor (NEAREST)."""
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    longest = max(img.size)
    if longest < side and side // longest > 1:
        return img.resize((img.width * (side // longest), img.height * (side // longest)), Image.NEAREST)
    if longest > side:
        img = img.copy()
        img.thumbnail((side, side), Image.LANCZOS)
    return img


def placeholder(side: int = THUMB) -> Image.Image:
    return Image.new("RGB", (side, side), PLACEHOLDER_RGB)


def img_tag(uri: str, title: str = "") -> str:
    return f'<img src="{esc(uri)}" title="{esc(title)}" alt="{esc(title)}"/>'


def array_uri(arr: np.ndarray | None, side: int = PICTURE, cmap: str | None = None) -> str:
    """An (H, W) or (H, W, 3) array as a PNG data URI: an image in [0, 1], or (``cmap``) a map scaled
    to its maximum and coloured; a missing or unusable array becomes the placeholder."""
    try:
        a = np.asarray(arr, dtype=np.float64)
        if cmap is not None:
            from matplotlib import colormaps

            top = float(np.nanmax(a)) if a.size else 0.0
            a = colormaps[cmap](np.clip(np.nan_to_num(a / top if top > 0 else a * 0), 0.0, 1.0))[..., :3]
        img = Image.fromarray((np.clip(np.nan_to_num(a), 0.0, 1.0) * 255).round().astype(np.uint8))
        return png_data_uri(fit(img, side))
    except Exception:  # noqa: BLE001 - a display never fails: an array that cannot be drawn is grey
        return png_data_uri(placeholder(side))


class ImageLookup:
    """Stored samples' images, read through each split's data source (``sources``: split -> data
    spec, as in the manifest); each source is opened and listed once, on first use."""

    def __init__(self, sources: dict[str, str] | None):
        from ..data.sources import SourceCatalog  # torch and the data sources load only when a display asks

        self.sources = dict(sources or {})
        self._catalog = SourceCatalog()
        self._broken: set[str] = set()

    def image(self, split: str | None, key: str) -> Image.Image | None:
        """The sample's decoded image; a new image (no split) is read from its path ``key``; None when unreadable."""
        from ..data.sources import open_image

        try:
            if split is None:
                return open_image(Path(key), key)
            spec = self.sources.get(split)
            if spec is None or spec in self._broken:
                return None
            try:
                source, index = self._catalog.get(spec)
            except Exception:  # noqa: BLE001 - an unreadable source shows grey squares
                self._broken.add(spec)
                return None
            i = index.get(key)
            return None if i is None else source.load(i)
        except Exception:  # noqa: BLE001 - a display never fails: an unreadable image is grey
            return None

    def picture(self, split: str | None, key: str, title: str = "") -> str:
        """The sample as HTML: its thumbnail, or a text sample's sentence (``data.text``)."""
        img = self.image(split, key)
        if isinstance(img, str):
            return f'<span class="sdb-text" title="{esc(title)}">{esc(img)}</span>'
        return img_tag(self.thumbnail(split, key, image=img), title)

    def thumbnail(self, split: str | None, key: str, side: int = THUMB, image=None) -> str:
        """The PNG data URI of the sample's thumbnail; the grey placeholder when it cannot be read."""
        img = self.image(split, key) if image is None else image
        if isinstance(img, str):  # a sentence has no thumbnail
            img = None
        try:
            return png_data_uri(placeholder(side) if img is None else fit(img, side))
        except Exception:  # noqa: BLE001 - e.g. an image mode PIL cannot convert
            return png_data_uri(placeholder(side))


def image_context(db, ids=None) -> dict:
    """What a result needs to find its samples' images later: each split's data spec and (for
    ``ids``) each sample's split. Kept on the result as an internal field, out of its JSON."""
    sources = {name: rec.source for name, rec in db.manifest.splits.items()}
    splits = {}
    if ids:
        marks = ",".join("?" * len(ids))
        rows = db._execute(f"SELECT sample_id, split FROM samples WHERE sample_id IN ({marks})", [int(i) for i in ids])
        splits = dict(rows.fetchall())
    return {"path": str(db.path), "sources": sources, "splits": splits}


# -- rows and cards ------------------------------------------------------------------------------

SAMPLE_HEADER = ["rank", "image", "sample", "split", "key", "label", "prediction", "", "similarity"]


def verdict(correct) -> str:
    if correct is None:
        return "<td></td>"
    return '<td class="ok">correct</td>' if correct else '<td class="bad">wrong</td>'


def sample_row(rank, picture: str, sample: dict, similarity=None) -> str:
    """One sample as a table row: rank, picture (HTML: ``ImageLookup.picture``), id, split, key, label,
    prediction, correct/wrong, similarity. ``sample`` holds sample_id, split, key, label_name, pred_name and correct."""
    cells = [esc(rank), picture, esc(fmt(sample.get("sample_id"))), esc(fmt(sample.get("split"))),
             esc(sample.get("key"))]
    cells += [esc(sample.get("label_name")), esc(sample.get("pred_name"))]
    row = "".join(f"<td>{c}</td>" for c in cells) + verdict(sample.get("correct"))
    return f"<tr>{row}<td>{esc(fmt(similarity))}</td></tr>"


def neighbors_html(result, images: ImageLookup) -> str:
    """A ``NeighborResult``: the query sample, then each neighbour, one row each."""
    q = result.query
    query = {"sample_id": q.sample_id, "split": q.split, "key": q.key, "label_name": q.label_name,
             "pred_name": q.pred_name, "correct": q.correct}
    pair = lambda s: f"{s.get('label_name')} -> {s.get('pred_name')}"  # noqa: E731
    rows = [sample_row("query", images.picture(q.split, q.key, pair(query)) if q.split is not None or q.text is None
                       else f'<span class="sdb-text">{esc(q.text)}</span>', query)]
    rows += [sample_row(n["rank"], images.picture(n["split"], n["key"], pair(n)), n, n["similarity"]) for n in result.neighbors]
    s = result.summary
    shares = ("" if s.neighbors == 0 else
              f"<p>misclassified {esc(fmt(s.share_misclassified, 2))}, same prediction "
              f"{esc(fmt(s.share_same_prediction, 2))}, same confusion {esc(fmt(s.share_same_confusion, 2))}</p>")
    note = f"<p><i>{esc(result.note)}</i></p>" if result.note else ""
    head = f"<b>{esc(len(result.neighbors))} nearest neighbours in {esc(result.space)} space</b>"
    return wrap(head + table(SAMPLE_HEADER, rows) + shares + note)


def group_card(group, images: ImageLookup, split_of: dict) -> str:
    """One error group (``ErrorGroup``) as a card: size, top confusions, top units, exemplars."""
    confusions = "".join(f"<li>{esc(c.pair)} &times; {esc(c.count)} ({esc(f'{c.purity:.0%}')})</li>"
                         for c in group.top_confusions)
    units = ", ".join(f"{esc(u.layer)}[{esc(u.channel)}] z={esc(fmt(u.mean_z, 2))}" for u in group.top_units)
    pictures = "".join(images.picture(split_of.get(e.sample_id), e.key, f"sample {e.sample_id}: {e.key}") if e.sample_id in split_of
                       else img_tag(png_data_uri(placeholder()), f"sample {e.sample_id}: {e.key}") for e in group.exemplars)
    return (f'<div class="sdb-card"><b>group {esc(group.cluster)}</b> &middot; {esc(group.size)} samples'
            f"<div>top confusions:<ul>{confusions}</ul></div><div>top units: {units}</div>"
            f"<div>{pictures}</div></div>")


def clusters_html(result, images: ImageLookup, split_of: dict) -> str:
    """A ``ClustersResult``: one card per error group."""
    head = f"<b>{esc(len(result.clusters))} error groups of {esc(result.samples)} samples</b> <code>{esc(result.run)}</code>"
    return wrap(head + "<div>" + "".join(group_card(g, images, split_of) for g in result.clusters) + "</div>")


def explanation_html(result) -> str:
    """An ``Explanation``: the sample, its image, input-space map and GradCAM, its top units."""
    s, c = result.sample, result.confidences
    head = (f"<b>sample {esc(s.sample_id)}</b> ({esc(s.split)}, <code>{esc(s.key)}</code>): label {esc(s.label_name)}, "
            f"predicted {esc(s.pred_name)} {'<span class=ok>correct</span>' if s.correct else '<span class=bad>wrong</span>'}"
            f"; p(true) {esc(fmt(c.true_conf, 3))}, p(pred) {esc(fmt(c.pred_conf, 3))}")
    panels = [("image", array_uri(result.image))]
    if result.input_map is not None:
        panels.append((f"input-space map (channels {result.map.channel_reduce})", array_uri(result.input_map, cmap="inferno")))
    if result.cam is not None:
        panels.append(("GradCAM", array_uri(result.cam, cmap="inferno")))
    figures = "".join(f'<figure style="display:inline-block;margin:4px">{img_tag(uri, name)}'
                      f"<figcaption>{esc(name)}</figcaption></figure>" for name, uri in panels)
    units = [plain_row([u.rank, u.unit_id, u.layer, u.channel, fmt(u.z, 3)]) for u in result.top_units]
    return wrap(f"<p>{head}</p><div>{figures}</div><b>top units</b>"
                + table(["rank", "unit", "layer", "channel", "z"], units))


def token_explanation_html(result) -> str:
    """A ``TokenExplanation``: the sentence with each token shaded by its saliency, its top units."""
    s, c = result.sample, result.confidences
    head = (f"<b>sample {esc(s.sample_id)}</b> ({esc(s.split)}, <code>{esc(s.key)}</code>): label {esc(s.label_name)}, "
            f"predicted {esc(s.pred_name)} {'<span class=ok>correct</span>' if s.correct else '<span class=bad>wrong</span>'}"
            f"; p(true) {esc(fmt(c.true_conf, 3))}, p(pred) {esc(fmt(c.pred_conf, 3))}")
    top = max([t.score for t in result.tokens] + [1e-30])
    spans = " ".join(f'<span title="{esc(fmt(t.score, 4))}" style="background:rgba(207,34,46,{t.score / top:.3f});'
                     f'padding:1px 3px;border-radius:3px">{esc(t.token)}</span>' for t in result.tokens)
    units = [plain_row([u.rank, u.unit_id, u.layer, u.channel, fmt(u.z, 3)]) for u in result.top_units]
    return wrap(f"<p>{head}</p><p>{spans}</p><b>top units</b>" + table(["rank", "unit", "layer", "channel", "z"], units))


def database_html(db) -> str:
    """A ``Database``: its path, commit, model, units and splits."""
    m = db.manifest
    about = [("path", db.path), ("commit", m.commit), ("model", m.model.spec), ("units", f"{m.n_units} {m.units['kind']}"),
             ("normalisation", db.normalisation)]
    about_rows = [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in about]
    summary = db.split_summary()
    splits = [plain_row([name, summary.get(name, {}).get("samples", 0), fmt(summary.get(name, {}).get("accuracy")),
                         summary.get(name, {}).get("mistakes", 0), rec.source]) for name, rec in m.splits.items()]
    return wrap("<b>saliencydb database</b>" + f"<table>{''.join(about_rows)}</table>"
                + table(["split", "samples", "accuracy", "mistakes", "source"], splits))
