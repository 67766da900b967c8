"""The report's inline style sheet."""

CSS = """
:root {
  --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --soft: #f6f8fa; --accent: #0969da;
  --red: #cf222e; --red-soft: #ffebe9; --green: #1a7f37; --green-soft: #dafbe1;
}
* { box-sizing: border-box; }
html { background: #fff; }
body { margin: 0; color: var(--fg); font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", "Helvetica Neue",
       "Liberation Sans", "DejaVu Sans", Arial, sans-serif; -webkit-font-smoothing: antialiased; }
main { max-width: 1340px; margin: 0 auto; padding: 36px 36px 64px; }
h1 { font-size: 30px; line-height: 1.2; margin: 2px 0 6px; letter-spacing: -0.01em; }
h2 { font-size: 22px; margin: 0 0 6px; letter-spacing: -0.01em; }
h3 { font-size: 16px; margin: 0 0 8px; }
h4 { font-size: 13px; margin: 0 0 8px; font-weight: 600; display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap; }
p { margin: 0 0 12px; }
b { font-weight: 600; }
.kicker { text-transform: uppercase; letter-spacing: 0.08em; font-size: 12px; font-weight: 600; color: var(--accent); }
.meta { color: var(--muted); font-size: 13px; margin-bottom: 14px; }
.lede { max-width: 900px; color: #333a42; }
.note { background: #fff8c5; border: 1px solid #eed888; border-radius: 8px; padding: 8px 12px; font-size: 14px; max-width: 900px; }
.small { font-size: 12.5px; }
.muted { color: var(--muted); }
.mono { font-family: ui-monospace, SFMono-Regular, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.9em; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
section { margin-top: 44px; padding-top: 26px; border-top: 1px solid var(--line); }
footer { margin-top: 48px; color: var(--muted); font-size: 12px; }

.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; margin: 18px 0 16px; }
.tile { border: 1px solid var(--line); border-radius: 12px; padding: 14px 16px; background: var(--soft); }
.tile .v { font-size: 28px; font-weight: 650; line-height: 1.15; font-variant-numeric: tabular-nums; }
.tile .l { color: var(--muted); font-size: 13px; margin-top: 2px; }
.tile.bad .v { color: var(--red); }
.two { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 28px; margin-top: 8px; }
table.data { border-collapse: collapse; font-size: 13.5px; width: 100%; margin-bottom: 8px; }
table.data th { text-align: left; font-weight: 600; color: var(--muted); font-size: 12px; border-bottom: 1px solid var(--line);
                padding: 6px 10px; vertical-align: bottom; }
table.data td { padding: 6px 10px; border-bottom: 1px solid #eef1f4; }
table.data th.num { text-align: right; }
nav.toc { margin-top: 18px; display: flex; gap: 8px; flex-wrap: wrap; }
nav.toc a { text-decoration: none; color: var(--accent); border: 1px solid var(--line); border-radius: 999px; padding: 4px 12px;
            font-size: 13px; background: #fff; }
.key { display: inline-block; font-size: 12px; padding: 0 6px; border-radius: 4px; border: 2px solid; line-height: 1.5; }
.key.bad { border-color: var(--red); } .key.ok { border-color: var(--green); }

/* thumbnails */
.grid { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
figure.t { margin: 0; width: calc(var(--side) + 6px); text-align: center; }
figure.t .frame { width: calc(var(--side) + 6px); height: calc(var(--side) + 6px); border: 3px solid var(--line); border-radius: 6px;
                  background: #0d1117; display: flex; align-items: center; justify-content: center; overflow: hidden; }
figure.t .sentence { color: #e6edf3; font: 11px/1.25 Georgia, serif; padding: 3px; text-align: left; overflow-wrap: anywhere; overflow: hidden; max-height: 100%; }
figure.t img { display: block; image-rendering: pixelated; max-width: 100%; max-height: 100%; }
figure.t.ok .frame { border-color: var(--green); }
figure.t.bad .frame { border-color: var(--red); }
figure.t.map .frame { border-color: #8c959f; }
figcaption { font-size: 12px; line-height: 1.3; margin-top: 3px; overflow-wrap: anywhere; }
figcaption .pair { font-weight: 600; font-variant-numeric: tabular-nums; }
figure.t.bad figcaption .pair { color: var(--red); }
figure.t.ok figcaption .pair { color: var(--green); }
figcaption .sub { display: block; color: var(--muted); font-size: 11px; font-variant-numeric: tabular-nums; }
.more { align-self: center; color: var(--muted); font-size: 13px; padding: 0 8px; }

/* error groups */
.group { border: 1px solid var(--line); border-radius: 12px; margin: 16px 0; overflow: hidden; }
.ghead { display: flex; align-items: center; gap: 10px; padding: 10px 16px; background: var(--soft); border-bottom: 1px solid var(--line); }
.ghead h3 { margin: 0; }
.pill { font-size: 12.5px; color: var(--muted); border: 1px solid var(--line); border-radius: 999px; padding: 1px 9px; background: #fff; }
.gbody { display: grid; grid-template-columns: 360px 1fr; gap: 20px; padding: 14px 16px; }
.gfacts { display: flex; flex-direction: column; gap: 12px; }
ul.pairs { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 6px; }
ul.pairs li { background: var(--red-soft); border-radius: 6px; padding: 2px 8px; font-size: 13px; display: flex; gap: 6px; align-items: baseline; }
ul.pairs .pair { font-weight: 650; color: var(--red); }
ul.pairs .count { font-variant-numeric: tabular-nums; }
table.units { border-collapse: collapse; width: 100%; font-size: 12.5px; }
table.units td { padding: 2px 6px 2px 0; }
table.units td.mono { white-space: nowrap; width: 1%; }
td.barcell { width: 60%; }
.bar { display: block; height: 9px; border-radius: 3px; background: linear-gradient(90deg, #fd8c73, var(--red)); }

/* mistakes */
article.mistake { display: grid; grid-template-columns: 240px 1fr; gap: 18px; padding: 16px 0; border-bottom: 1px solid #eef1f4; }
article.mistake:last-of-type { border-bottom: none; }
.query .pics { display: flex; gap: 8px; }
.qfacts { margin-top: 8px; font-size: 13px; }
.qfacts .big { font-size: 15px; margin-bottom: 2px; }
.red { color: var(--red); }
.nbrs { display: grid; grid-template-columns: repeat(auto-fit, minmax(462px, 1fr)); gap: 14px 20px; }
.nside h4 { margin-bottom: 6px; }
.share { font-weight: 600; font-size: 12px; padding: 1px 8px; border-radius: 999px; background: var(--green-soft); color: var(--green); }
.share.mid { background: #fff1e5; color: #bc4c00; }
.share.hi { background: var(--red-soft); color: var(--red); }

/* plots */
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 20px; }
figure.plot { margin: 0; border: 1px solid var(--line); border-radius: 12px; padding: 8px; }
figure.plot img { display: block; max-width: 100%; height: auto; }
@media print { section { break-inside: avoid-page; } }
"""
