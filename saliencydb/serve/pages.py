"""The web app's pages: HTML rendered from the JSON documents of ``serve.api`` (nothing else is read).
Every value is escaped; every sample links to its page; pictures come from ``/img/...``."""

from __future__ import annotations

import html
import shlex
import urllib.parse

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:8px 16px}header a{color:#fff;margin-right:16px;text-decoration:none}
main{padding:12px 16px}table{border-collapse:collapse;background:#fff;margin:6px 0}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px;width:300px}
.thumb{display:inline-block;margin:2px;text-align:center;font-size:11px}.thumb img{display:block;border:3px solid #8c959f;border-radius:4px}
.thumb.ok img{border-color:#1a7f37}.thumb.bad img{border-color:#cf222e}.ok{color:#1a7f37}.bad{color:#cf222e}
.sentence{display:block;max-width:240px;background:#fff;border:2px solid #8c959f;border-radius:4px;padding:3px;font-family:Georgia,serif}
.cols{display:flex;gap:24px;flex-wrap:wrap}.note{background:#fff8c5;border:1px solid #d4a72c;padding:4px 8px}.err{color:#cf222e;font-weight:bold}textarea{width:100%;font-family:monospace}
"""


def e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, db_path: str) -> str:
    nav = "".join(f'<a href="{h}">{t}</a>' for h, t in (("/", "Overview"), ("/sql", "SQL"), ("/search", "Search by image"),
                                                            ("/triage", "Triage")))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{e(title)} · saliencydb</title><style>{STYLE}</style>"
            f"</head><body><header>{nav}<span style='opacity:.7'>{e(db_path)}</span></header><main><h2>{e(title)}</h2>"
            f"{body}</main></body></html>")


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def thumb(sample_id, caption: str = "", correct=None, text: str | None = None, extra: str = "") -> str:
    """A sample as a clickable picture (or its sentence), bordered by its correctness."""
    cls = "" if correct is None else (" ok" if correct else " bad")
    pic = (f'<span class="sentence">{e(text)}</span>' if text is not None
           else f'<img src="/img/{int(sample_id)}.png" alt="sample {int(sample_id)}" width="72" height="72">')
    return (f'<a class="thumb{cls}" href="/sample/{int(sample_id)}" data-sample="{int(sample_id)}" {extra}>{pic}'
            f"{e(caption)}</a>")


def table(header: list[str], rows: list[list[str]], attrs: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table {attrs}><tr>{head}</tr>{body}</table>"


def note(text: str | None, name: str) -> str:
    """A stored table's note (missing or stale, with the command that makes it), or nothing."""
    return f'<p class="note" id="{e(name)}-note">{e(text)}</p>' if text else ""


def overview(doc: dict, db_path: str) -> str:
    info = doc["info"]
    notes = doc.get("notes", {})
    splits = table(["split", "samples", "accuracy", "mistakes", "source"],
                   [[e(name), e(s["samples"]), pct(s["accuracy"]), e(s["mistakes"]), e(s["source"])]
                    for name, s in info["splits"].items()], 'id="splits"')
    shared = ""
    if "mistakes" in doc:
        rows = []
        for name, sp in doc["mistakes"]["splits"].items():
            for space in doc.get("spaces", ("saliency", "feature")):
                d = sp.get(space) or {}
                rows.append([e(name), e(space), e(sp.get("incorrect")),
                             pct((d.get("correct_neighbors_of_incorrect") or {}).get("mean")),
                             pct((d.get("same_confusion_of_incorrect") or {}).get("mean"))])
        absent = "".join(f'<p class="note" data-absent="{e(space)}">the {e(space)} space is absent ({e(why)})</p>'
                         for space, why in doc.get("absent", {}).items())
        shared = ("<h3>Do a mistake's neighbours share it?</h3>" + table(
            ["split", "space", "mistakes", "correct among a mistake's neighbours", "same confusion"], rows, 'id="shared"')
            + absent)
    elif notes.get("mistakes"):
        shared = "<h3>Do a mistake's neighbours share it?</h3>" + note(notes["mistakes"], "shared")
    cards = []
    for g in doc["groups"]:
        confusions = "".join(f"<li>{e(c['pair'])} × {e(c['count'])}</li>" for c in g["top_confusions"])
        units = ", ".join(f"{e(u['layer'])}[{e(u['channel'])}] z={u['mean_z']:.2f}" for u in g["top_units"])
        pics = "".join(thumb(i) for i in g["exemplars"]) if doc["modality"] == "image" else ""
        cards.append(f'<div class="card" data-group="{g["cluster"]}"><a href="/group/{g["cluster"]}"><b>group {g["cluster"]}</b></a> · '
                     f'{g["size"]} samples, {g["mistakes"]} mistakes<ul>{confusions}</ul><div>{pics}</div>'
                     f'<div style="font-size:12px">most blamed: {units}</div></div>')
    groups = ('<h3>Error groups</h3>' + note(notes.get("groups"), "groups") + '<div class="cards" id="groups">'
              + "".join(cards) + "</div>" if cards else
              f"<p id=\"groups-note\">No error groups stored yet: run <code>saliencydb clusters --db {e(shlex.quote(db_path))}</code>.</p>")
    head = (f"<p>model <code>{e(info['model']['spec'])}</code>, {e(info['units']['count'])} {e(info['units']['kind'])} units, "
            f"commit {e(info['commit'])}</p>")
    return layout("Overview", head + splits + shared + groups, db_path)


def group(doc: dict, db_path: str, modality: str) -> str:
    members = "".join(thumb(m["sample_id"], f"{m['label_name']}→{m['pred_name']}", m["correct"], m.get("text")) for m in doc["members"])
    blame = table(["rank", "unit", "layer", "channel", "mean z"],
                  [[e(b["rank"]), e(b["unit_id"]), e(b["layer"]), e(b["channel"]), f"{b['mean_z']:.3f}"] for b in doc["blame"]],
                  'id="blame"')
    plot = f'<h3>Average profile</h3><img src="/img/group/{doc["cluster"]}/profile.png" alt="profile" style="max-width:100%">'
    body = (note(doc.get("note"), "group") + f'<p>{doc["size"]} members, mistakes first.</p><div id="members">{members}</div>'
            f"<h3>Most blamed units</h3>{blame}{plot}")
    return layout(f"Error group {doc['cluster']}", body, db_path)


def _neighbour_list(space: str, doc: dict, modality: str) -> str:
    if doc.get("absent"):
        return f'<div id="{space}-neighbors" data-absent="1"><h3>{space}</h3><p class="note">{e(doc["absent"])}</p></div>'
    if doc.get("error"):
        return f'<div id="{space}-neighbors"><h3>{space}</h3><p class="err">{e(doc["error"])}</p></div>'
    items = "".join(thumb(n["sample_id"], f"{n['label_name']}→{n['pred_name']} {n['similarity']:.2f}", n["correct"],
                          n.get("text") if modality == "text" else None, f'data-rank="{n["rank"]}"')
                    for n in doc["neighbors"])
    return f'<div id="{space}-neighbors"><h3>{space} neighbours</h3>{items}</div>'


def _map_choice(sid: int, channel_reduce: str) -> tuple[str, str, str]:
    """The input-space map's URL, its caption, and a link to the sample page with the other channel reduction."""
    other = "abs-max" if channel_reduce == "max-abs" else "max-abs"

    def query(how: str) -> str:
        return "" if how == "max-abs" else f"?channel_reduce={how}"

    switch = (f'<p id="channel-reduce">input-space map: colour channels reduced by <b>{e(channel_reduce)}</b> '
              f'(<a href="/sample/{sid}{query(other)}">show {other}</a>)</p>')
    return f"/img/{sid}/map.png{query(channel_reduce)}", f"input-space saliency ({channel_reduce})", switch


def sample(doc: dict, db_path: str, modality: str, channel_reduce: str = "max-abs") -> str:
    s = doc["sample"]
    verdict = '<span class="ok">correct</span>' if s["correct"] else '<span class="bad">wrong</span>'
    head = (f'<p id="meta" data-label="{e(s["label_name"])}" data-pred="{e(s["pred_name"])}">split {e(s["split"])}, '
            f'key <code>{e(s["key"])}</code>: label <b>{e(s["label_name"])}</b>, predicted <b>{e(s["pred_name"])}</b> '
            f'{verdict}; p(true) {s["true_conf"]:.3f}, p(pred) {s["pred_conf"]:.3f}, loss {s["loss"]:.3f}</p>')
    if modality == "text":
        pics = f'<p class="sentence" id="sentence">{e(s.get("text"))}</p>'
    else:
        sid = int(s["sample_id"])
        map_src, map_cap, switch = _map_choice(sid, channel_reduce)
        pics = "".join(f'<figure style="display:inline-block;margin:4px"><img src="{e(src)}" alt="{cap}" width="{w}">'
                       f"<figcaption>{cap}</figcaption></figure>" for src, cap, w in
                       ((f"/img/{sid}.png?side=224", "image", 224), (map_src, map_cap, 224),
                        (f"/img/{sid}/gradcam.png", "GradCAM", 224))) + switch
    units = table(["rank", "unit", "layer", "channel", "z"],
                  [[e(u["rank"]), e(u["unit_id"]), e(u["layer"]), e(u["channel"]), f"{u['z']:.3f}"] for u in doc["top_units"]],
                  'id="top-units"')
    where = (f'<form method="get"><label>restrict neighbours: <input name="where" size="50" value="{e(doc.get("where") or "")}" '
             f'placeholder="NOT correct"></label> <button>search</button>'
             + ('' if channel_reduce == "max-abs" else f'<input type="hidden" name="channel_reduce" value="{e(channel_reduce)}">')
             + '</form>')
    cols = "".join(_neighbour_list(space, doc["neighbors"][space], modality) for space in ("saliency", "feature"))
    return layout(f"Sample {s['sample_id']}", head + pics + "<h3>Top units</h3>" + units + where + f'<div class="cols">{cols}</div>',
                  db_path)


def sql(query: str, doc: dict | None, error: str | None, db_path: str) -> str:
    form = (f'<form method="post" action="/sql"><textarea name="q" rows="5">{e(query)}</textarea><br>'
            f"<button>run</button></form>")
    out = ""
    if error:
        out = f'<p class="err" id="sql-error">{e(error)}</p>'
    elif doc is not None:
        def cell(col, v):
            if col == "sample_id" and isinstance(v, int):
                return f'<a href="/sample/{v}" data-sample="{v}">{v}</a>'
            return e(v)

        rows = [[cell(c, r.get(c)) for c in doc["columns"]] for r in doc["rows"]]
        more = f"<p>first {doc['max_rows']} rows shown</p>" if doc["truncated"] else ""
        csv = f'<p><a id="csv" href="/sql.csv?q={urllib.parse.quote(query)}">download CSV</a></p>'
        notes = "".join(f"<p><i>{e(n)}</i></p>" for n in doc.get("notes", []))
        out = notes + table(doc["columns"], rows, 'id="sql-result"') + more + csv
    return layout("SQL", form + out, db_path)


def search(doc: dict | None, error: str | None, db_path: str) -> str:
    form = ('<form method="post" action="/search" enctype="multipart/form-data"><input type="file" name="image" accept="image/*"> '
            '<label>label <input name="label" size="10"></label> <button id="search-button">search</button></form>')
    out = ""
    if error:
        out = f'<p class="err" id="search-error">{e(error)}</p>'
    elif doc is not None:
        q = doc["query"]
        out = (f'<p id="search-query">the image: label {e(q["label_name"])}, predicted {e(q["pred_name"])}'
               f' ({"correct" if q["correct"] else "wrong"})</p>' + _neighbour_list("saliency", doc, "image"))
    return layout("Search by image", form + out, db_path)


def triage(doc: dict, error: str | None, db_path: str) -> str:
    links = " ".join(f'<a href="/triage?split={urllib.parse.quote(s)}">{e(s)}</a>' for s in doc.get("splits", []))
    body = f"<p>triaged splits: {links or 'none yet (saliencydb triage --db DB --split NEW)'}</p>"
    if error:
        body += f'<p class="err">{e(error)}</p>'
    elif doc.get("split"):
        new = [r for r in doc["rows"] if r["cluster"] == -1]
        known = [r for r in doc["rows"] if r["cluster"] != -1]
        body += note(doc.get("note"), "triage")
        body += (f'<h3>New failure modes ({len(new)})</h3><div id="triage-new">'
                 + "".join(thumb(r["sample_id"], f"{r['label_name']}→{r['pred_name']}", False, r.get("text")) for r in new) + "</div>"
                 f'<h3>Joined known groups ({len(known)})</h3><div id="triage-known">'
                 + "".join(thumb(r["sample_id"], f"group {r['cluster']} ({r['similarity']:.2f})", False, r.get("text")) for r in known)
                 + "</div>")
    return layout("Triage", body, db_path)


def error_page(status: int, message: str) -> str:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{status}</title><style>{STYLE}</style></head>"
            f'<body><main><h2>{status}</h2><p class="err" id="error">{e(message)}</p><p><a href="/">overview</a></p></main></body></html>')
