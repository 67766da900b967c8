"""A self-contained HTML gallery of the most confident mistakes, their maps and their saliency neighbours."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import QueryError
from .context import Explainer
from .explanation import explain_sample
from .maps import display_map, overlay

THUMB = 128


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


def _caption(meta: dict) -> str:
    cls = "right" if meta["correct"] else "wrong"
    return f"<span class='{cls}'>{html.escape(str(meta['label_name']))} &rarr; {html.escape(str(meta['pred_name']))}</span>"


def gallery(ex: Explainer, out_dir: str | Path, *, split: str | None = None, limit: int = 12, n_neighbors: int = 5,
            top_k: int = 10, progress=None) -> dict:
    """Write ``out_dir/index.html``: the ``limit`` most confident mistakes (of ``split``) with their input-space
    map, GradCAM and their ``n_neighbors`` nearest saliency neighbours; returns a summary."""
    if limit < 1:
        raise QueryError(f"--limit must be at least 1, got {limit}")
    out_dir = check_out_dir(out_dir)
    db = ex.db
    ids = db.ids_where("NOT correct", split)
    if len(ids) == 0:
        raise QueryError(f"no misclassified samples in {'split ' + split if split else 'the database'}")
    marks = ",".join(str(int(i)) for i in ids)
    ranked = [r[0] for r in db.con.execute(
        f"SELECT sample_id FROM samples WHERE sample_id IN ({marks}) ORDER BY pred_conf DESC, sample_id LIMIT {int(limit)}"
    ).fetchall()]
    task = progress.task("explaining mistakes", len(ranked), unit="samples") if progress else None
    cards, summary = [], []
    for sid in ranked:
        e = explain_sample(ex, sid, None, top_k=top_k)
        meta = e.numbers["sample"]
        conf = e.numbers["confidences"]
        nb = db.neighbors(sid, k=n_neighbors)
        figs = [f"<figure><img src='{png_data_uri(e.image)}'><figcaption>input</figcaption></figure>",
                f"<figure><img src='{png_data_uri(overlay(e.image, display_map(e.input_map)))}'>"
                f"<figcaption>input-space saliency</figcaption></figure>"]
        if e.cam is not None:
            c = e.cam / e.cam.max() if e.cam.max() > 0 else e.cam
            figs.append(f"<figure><img src='{png_data_uri(overlay(e.image, c, cmap='jet', max_alpha=0.6))}'>"
                        f"<figcaption>GradCAM ({html.escape(str(meta['pred_name']))})</figcaption></figure>")
        neigh = []
        for r in nb.neighbors:
            img = ex.display_image(ex.image_tensor(r["split"], r["key"]))
            neigh.append(f"<figure><img src='{png_data_uri(img, THUMB * 3 // 4)}'><figcaption>#{r['sample_id']} "
                         f"{_caption(r)}<br>cos {r['similarity']:.3f}</figcaption></figure>")
        share = nb.summary.get("share_same_confusion")
        units = ", ".join(f"{u['layer']}[{u['channel']}]" for u in e.numbers["top_units"][:5])
        cards.append(
            f"<div class='card'><h2>#{sid} <small>{html.escape(str(meta['key']))}</small> {_caption(meta)} "
            f"<small>p(pred) {conf['pred_conf']:.3f}, p(true) {conf['true_conf']:.3f}</small></h2>"
            f"<div class='row'>{''.join(figs)}<div class='nb'><div style='font-size:12px;margin-bottom:4px'>"
            f"{len(nb.neighbors)} nearest saliency neighbours"
            + (f" &mdash; {share:.0%} make the same mistake" if share is not None else "")
            + f"</div><div class='row'>{''.join(neigh)}</div></div></div>"
            f"<div style='font-size:12px;color:#666;margin-top:6px'>top units: {html.escape(units)}</div></div>")
        summary.append({"sample_id": sid, "key": meta["key"], "label_name": meta["label_name"],
                        "pred_name": meta["pred_name"], "pred_conf": conf["pred_conf"], "same_mistake_neighbors": share})
        if task:
            task.advance(1)
    if task:
        task.close()
    title = f"The {len(ranked)} most confident mistakes" + (f" of split {split}" if split else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><p>Database {html.escape(str(db.path))}. Input-space saliency "
            f"boosts each sample's top {top_k} filters; neighbours are by cosine similarity of standardised profiles."
            f"</p>{''.join(cards)}</body></html>")
    out_dir.mkdir(exist_ok=True)
    path = out_dir / "index.html"
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise QueryError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    return {"out": str(path), "split": split, "mistakes": summary}
