"""A self-contained HTML gallery of the most confident mistakes, their maps and their saliency neighbours."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import QueryError
from ..results import Result
from .context import Explainer
from .explanation import Explanation, explain_sample
from .maps import display_map, overlay

THUMB = 128


@dataclass
class GalleryEntry(Result):
    """One mistake of the gallery."""

    sample_id: int
    key: str
    label_name: str
    pred_name: str
    pred_conf: float
    same_mistake_neighbors: float | None  # share of its saliency neighbours making the same mistake


@dataclass
class Gallery(Result):
    """A ``gallery`` result: the page written and its mistakes, most confident first."""

    out: str
    split: str | None
    mistakes: list[GalleryEntry]

    def rows(self) -> list[dict]:
        """One row per mistake (the CSV output)."""
        return [m.to_dict() for m in self.mistakes]


def png_data_uri(rgb: np.ndarray, side: int = THUMB) -> str:
    """An (H, W) or (H, W, 3) float image in [0, 1] as a base64 PNG data URI, scaled to about ``side`` pixels."""
    arr = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    scale = side / max(img.size)
    if scale != 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def check_out_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise QueryError(f"--out {str(path)!r} is a file; the gallery needs a directory (it writes DIR/index.html)")
    if not path.parent.is_dir():
        raise QueryError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not exist; create it first")
    return path


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px 16px;margin:0 0 18px}
.row{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0;text-align:center;font-size:12px}
figure img{display:block;border:1px solid #ccc;image-rendering:pixelated}
.wrong{color:#c0392b;font-weight:600}.right{color:#1e7d45}
h2{font-size:16px;margin:4px 0 8px}.nb{border-left:3px solid #eee;padding-left:12px}
"""


def _caption(correct: bool, label_name, pred_name) -> str:
    cls = "right" if correct else "wrong"
    return f"<span class='{cls}'>{html.escape(str(label_name))} &rarr; {html.escape(str(pred_name))}</span>"


def gallery(ex: Explainer, out_dir: str | Path, *, split: str | None = None, limit: int = 12, n_neighbors: int = 5,
            top_k: int = 10, progress=None) -> Gallery:
    """Write ``out_dir/index.html``: the ``limit`` most confident mistakes (of ``split``) with their input-space
    map, GradCAM and their ``n_neighbors`` nearest saliency neighbours; returns a summary."""
    if limit < 1:
        raise QueryError(f"--limit must be at least 1, got {limit}")
    ex.require_images("the --errors gallery")
    out_dir = check_out_dir(out_dir)
    ranked = _most_confident_mistakes(ex.db, split, limit)
    task = progress.task("explaining mistakes", len(ranked), unit="samples") if progress else None
    cards, summary = [], []
    for sid in ranked:
        e = explain_sample(ex, sid, None, top_k=top_k)
        nb = ex.db.neighbors(sid, k=n_neighbors)
        share = nb.summary.share_same_confusion
        cards.append(_card(ex, e, nb.neighbors, share))
        summary.append(GalleryEntry(sample_id=sid, key=e.sample.key, label_name=e.sample.label_name,
                                    pred_name=e.sample.pred_name, pred_conf=e.confidences.pred_conf,
                                    same_mistake_neighbors=share))
        if task:
            task.advance(1)
    if task:
        task.close()
    title = f"The {len(ranked)} most confident mistakes" + (f" of split {split}" if split else "")
    path = _write_page(out_dir, title, cards, ex.db.path, top_k, ex.channel_reduce)
    return Gallery(out=str(path), split=split, mistakes=summary)


def _most_confident_mistakes(db, split: str | None, limit: int) -> list[int]:
    """Ids of the ``limit`` misclassified samples (of ``split``) of highest predicted-class confidence."""
    ids = db.ids_where("NOT correct", split)
    if len(ids) == 0:
        raise QueryError(f"no misclassified samples in {'split ' + split if split else 'the database'}")
    marks = ",".join(str(int(i)) for i in ids)
    return [r[0] for r in db._execute(
        f"SELECT sample_id FROM samples WHERE sample_id IN ({marks}) ORDER BY pred_conf DESC, sample_id LIMIT {int(limit)}"
    ).fetchall()]


def _card(ex: Explainer, e: Explanation, neighbors: list, share: float | None) -> str:
    """One mistake's card: its input, maps and saliency neighbours."""
    s, conf = e.sample, e.confidences
    figs = [f"<figure><img src='{png_data_uri(e.image)}'><figcaption>input</figcaption></figure>",
            f"<figure><img src='{png_data_uri(overlay(e.image, display_map(e.input_map)))}'>"
            f"<figcaption>input-space saliency</figcaption></figure>"]
    if e.cam is not None:
        c = e.cam / e.cam.max() if e.cam.max() > 0 else e.cam
        figs.append(f"<figure><img src='{png_data_uri(overlay(e.image, c, cmap='jet', max_alpha=0.6))}'>"
                    f"<figcaption>GradCAM ({html.escape(str(s.pred_name))})</figcaption></figure>")
    neigh = []
    for r in neighbors:
        img = ex.display_image(ex.image_tensor(r["split"], r["key"]))
        neigh.append(f"<figure><img src='{png_data_uri(img, THUMB * 3 // 4)}'><figcaption>#{r['sample_id']} "
                     f"{_caption(r['correct'], r['label_name'], r['pred_name'])}<br>cos {r['similarity']:.3f}"
                     f"</figcaption></figure>")
    units = ", ".join(f"{u.layer}[{u.channel}]" for u in e.top_units[:5])
    return (
        f"<div class='card'><h2>#{s.sample_id} <small>{html.escape(str(s.key))}</small> "
        f"{_caption(s.correct, s.label_name, s.pred_name)} "
        f"<small>p(pred) {conf.pred_conf:.3f}, p(true) {conf.true_conf:.3f}</small></h2>"
        f"<div class='row'>{''.join(figs)}<div class='nb'><div style='font-size:12px;margin-bottom:4px'>"
        f"{len(neighbors)} nearest saliency neighbours"
        + (f" &mdash; {share:.0%} make the same mistake" if share is not None else "")
        + f"</div><div class='row'>{''.join(neigh)}</div></div></div>"
        f"<div style='font-size:12px;color:#666;margin-top:6px'>top units: {html.escape(units)}</div></div>")


def _write_page(out_dir: Path, title: str, cards: list[str], db_path, top_k: int, channel_reduce: str) -> Path:
    """Write the self-contained page ``out_dir/index.html``."""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><p>Database {html.escape(str(db_path))}. Input-space saliency "
            f"boosts each sample's top {top_k} filters (a pixel's colour channels reduced by {channel_reduce}); "
            "neighbours are by cosine similarity of standardised profiles."
            f"</p>{''.join(cards)}</body></html>")
    out_dir.mkdir(exist_ok=True)
    path = out_dir / "index.html"
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise QueryError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    return path
