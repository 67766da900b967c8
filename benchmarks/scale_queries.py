"""Interactive queries at the paper's scale, from the shell: `saliencydb neighbors --id N -k 10`
(saliency space, the exact flat index) and `saliencydb verify`, each run as a CLI subprocess,
timed end to end (interpreter start-up included) with its peak RSS (issue 27).

    python benchmarks/scale_queries.py --dir /tmp/scale [--samples 50000] [--units 26560] [--features 2048]
                                       [--repeats 3] [--json]

The synthetic database is written through the real writer (benchmarks/query.py's builder) into
``--dir/db-<samples>x<units>x<features>`` once and reused by later runs (build it once, then
compare the code before and after a change on the same files). Peak RSS is the child's
``ru_maxrss`` as GNU time (/usr/bin/time, required) reports it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name, usable_cores  # noqa: E402

TIME = "/usr/bin/time"  # GNU time: the child's peak RSS


def database(root: Path, samples: int, units: int, features: int) -> tuple[Path, float | None]:
    """The cached database of that size (built now, through the real writer, if absent) and its build seconds."""
    db = root / f"db-{samples}x{units}x{features}"
    if (db / "manifest.json").exists():
        return db, None
    from query import build  # benchmarks/query.py

    root.mkdir(parents=True, exist_ok=True)
    return db, build(db, samples, units, features)


def run_cli(args: list[str]) -> dict:
    """One CLI subprocess: wall seconds, peak RSS (MiB) and exit status. The peak is GNU time's ``%M``
    (the child's ru_maxrss): Linux counts into a child's ru_maxrss the memory of the process it was
    forked from, so this process, holding a built database, must not be that parent."""
    exe = Path(sys.executable).with_name("saliencydb")
    with tempfile.TemporaryDirectory() as tmp:
        peak, log = Path(tmp) / "peak", Path(tmp) / "log"
        t = time.perf_counter()
        with open(log, "w") as out:  # a file, not a pipe: the child never blocks on a full pipe
            rc = subprocess.call([TIME, "-o", str(peak), "-f", "%M", str(exe)] + args, stdout=out, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t
        kib = int(peak.read_text().split()[-1])
        return {"wall_s": round(wall, 3), "peak_rss_mib": round(kib / 1024, 1), "rc": rc, "output": log.read_text()[-400:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="where the database is built once and reused")
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--units", type=int, default=26_560)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each command (each reported)")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    db, build_s = database(args.dir, args.samples, args.units, args.features)
    disk = sum(p.stat().st_size for p in db.rglob("*") if p.is_file())
    commands = {f"neighbors --id {i} -k 10": ["neighbors", "--db", str(db), "--id", str(i), "-k", "10"]
                for i in (7, args.samples // 2, args.samples - 1)}
    if not args.skip_verify:
        commands["verify"] = ["verify", "--db", str(db)]
    runs = {name: [run_cli(cmd) for _ in range(args.repeats)] for name, cmd in commands.items()}
    result = {"machine": {"cpu": cpu_name(), "cores": usable_cores(), "python": sys.version.split()[0]},
              "database": {"samples": args.samples, "units": args.units, "features": args.features, "bytes_on_disk": disk,
                           "build_seconds": None if build_s is None else round(build_s, 1)},
              "runs": runs}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"database: {args.samples:,} samples x {args.units:,} units, {args.features} features, "
          f"{disk / 2**30:.1f} GiB on disk" + (f" (built in {build_s:.0f} s)" if build_s else " (reused)"))
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores")
    for name, rs in runs.items():
        cells = ", ".join(f"{r['wall_s']:.2f} s / {r['peak_rss_mib']:,.0f} MiB" + ("" if r["rc"] == 0 else f" (exit {r['rc']})")
                          for r in rs)
        print(f"  saliencydb {name:<26} {cells}")
        if any(r["rc"] for r in rs):
            print("    " + rs[-1]["output"].strip().replace("\n", "\n    "))


if __name__ == "__main__":
    main()
