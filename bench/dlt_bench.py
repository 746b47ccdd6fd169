"""End to end with no latency: ``mirror sync`` against dlt's ``rest_api`` source, same data.

    python bench/dlt_bench.py            # 200,000 requests over 3 days
    python bench/dlt_bench.py --quick    # 50,000
    python bench/dlt_bench.py --venv DIR # where dlt is installed (default: a temp folder)

Not part of CI: the first run creates a virtualenv and installs ``dlt[sqlalchemy]`` (1.31.0)
into it with pip, then reuses it.

The simulated API (its own process, 127.0.0.1, no latency, no faults) serves the same world
to both, and each side backfills all of it into a new SQLite file, in its own process, timed
from start to exit:

- mirror: ``mirror sync --since … --until … -e …`` (default concurrency);
- dlt: a ``rest_api`` source over the same endpoint (``start``/``end`` of the whole range, all
  three apps in one query: the fewest pages dlt could ask for), ``limit=100``, both expands,
  cursor paginator on ``next_cursor``, ``data_selector: items``, ``max_table_nesting=0``
  (payloads stored as JSON text, as mirror does), ``write_disposition: merge`` with
  ``primary_key: request_id``, into SQLite through dlt's ``sqlalchemy`` destination with
  ``create_primary_keys=True``.

Printed: items/s (rows stored / wall time, median of ``--runs``) and peak RSS of each, the ratio.
Target: mirror >= 5x dlt's items/s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import common as c

TARGET = 5.0
DLT = "dlt[sqlalchemy]==1.31.0"

DLT_PIPELINE = r"""
import json, sys
import dlt
from dlt.destinations import sqlalchemy
from dlt.sources.rest_api import rest_api_source

cfg = json.loads(sys.argv[1])
source = rest_api_source(
    {
        "client": {
            "base_url": cfg["base_url"] + "/",
            "auth": {"type": "api_key", "name": "Authorization",
                     "api_key": "Key " + cfg["key"], "location": "header"},
        },
        "resource_defaults": {"write_disposition": "merge", "primary_key": "request_id",
                              "max_table_nesting": 0},
        "resources": [
            {
                "name": "requests",
                "endpoint": {
                    "path": "serverless/requests/by-endpoint",
                    "params": {"endpoint_id": cfg["targets"], "start": cfg["since"],
                               "end": cfg["until"], "limit": 100,
                               "expand": ["payloads", "billing"]},
                    "data_selector": "items",
                    "paginator": {"type": "cursor", "cursor_path": "next_cursor",
                                  "cursor_param": "cursor"},
                },
            }
        ],
    },
    max_table_nesting=0,
)
pipeline = dlt.pipeline(
    pipeline_name="mirror_bench",
    pipelines_dir=cfg["pipelines_dir"],
    destination=sqlalchemy(credentials="sqlite:///" + cfg["db"], create_primary_keys=True),
    dataset_name="main",
)
pipeline.run(source)
with pipeline.sql_client() as client:
    rows = client.execute_sql("SELECT count(*) FROM requests")[0][0]
print(json.dumps({"rows": rows}))
"""


def ensure_venv(folder: Path) -> Path:
    py = folder / "bin" / "python"
    if (
        py.exists()
        and subprocess.run([py, "-c", "import dlt"], capture_output=True).returncode == 0
    ):
        return py
    print(f"installing {DLT} into {folder} (once)...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", DLT], check=True)
    return py


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "mirror-bench-dlt-venv"))
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="skip the extra mirror runs on a database without triggers",
    )
    a = p.parse_args()
    runs = a.runs or 3
    spec = c.WorldSpec(requests=50_000 if a.quick else 200_000)
    py = ensure_venv(Path(a.venv))
    version = subprocess.run(
        [py, "-c", "import dlt; print(dlt.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    c.header(
        "End to end, no latency: mirror vs dlt rest_api",
        [
            f"world: {spec.requests:,} requests over {spec.days:g} days, apps "
            f"{', '.join(c.TARGETS)}; API without latency or faults; dlt {version}; "
            f"{runs} runs each, new database each run",
        ],
    )
    tmp = c.workdir(a.tmp, "mirror-dlt-")
    script = tmp / "dlt_pipeline.py"
    script.write_text(DLT_PIPELINE)
    m_rate, d_rate, m_rss, d_rss, bare_rate = [], [], [], [], []
    tpl = triggers = None
    if not a.no_isolate:
        import ingest_bench

        tpl = ingest_bench.template(tmp)
        sets, _ = ingest_bench.schema_sets(tpl)
        triggers = [t for names in sets.values() for t in names]
    with c.SimServer(spec) as server:
        for i in range(runs):
            if tpl is not None and triggers is not None:
                import ingest_bench

                bare = ingest_bench.variant(tpl, "bare.db", triggers, [])
                res = c.mirror_sync(server, bare)
                bare_rate.append(c.last_run(bare)["rows"] / res.seconds)
                c.remove_db(bare)
            db = tmp / "mirror.db"
            c.remove_db(db)
            res = c.mirror_sync(server, db)
            rows = c.last_run(db)["rows"]
            m_rate.append(rows / res.seconds)
            m_rss.append(res.max_rss_mib)
            print(f"  mirror run {i + 1}/{runs}: {rows} rows in {res.seconds:.1f}s",
                  file=sys.stderr, flush=True)  # fmt: skip

            ddb = tmp / "dlt.db"
            for f in tmp.glob("dlt.db*"):
                f.unlink()
            pipes = tmp / f"pipelines-{i}"
            cfg = {
                "base_url": server.base_url,
                "key": c.KEY,
                "targets": server.targets,
                "since": server.since,
                "until": server.until,
                "db": str(ddb),
                "pipelines_dir": str(pipes),
            }
            env = c.sim_env(server.base_url)
            env.pop("PYTHONPATH", None)
            res = c.run_measured([str(py), str(script), json.dumps(cfg)], env)
            if res.code != 0:
                sys.exit(f"dlt failed: {res.stderr[-3000:]}")
            drows = json.loads(res.stdout.strip().splitlines()[-1])["rows"]
            if drows != rows:
                print(f"  note: dlt stored {drows} rows, mirror {rows}", file=sys.stderr)
            d_rate.append(drows / res.seconds)
            d_rss.append(res.max_rss_mib)
            print(f"  dlt run {i + 1}/{runs}: {drows} rows in {res.seconds:.1f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
    m, d = c.median(m_rate), c.median(d_rate)
    print(f"mirror: `{c.mirror_sync_cmd_text(None)}`; dlt: rest_api pipeline in {a.venv}\n")
    table = [
        ["items/s, backfill, no latency", m, d, f"{m / d:.2f}x", f">= {TARGET:g}x",
         c.verdict(m / d >= TARGET)],
        ["peak RSS (MiB)", c.median(m_rss), c.median(d_rss),
         f"{c.median(m_rss) / c.median(d_rss):.2f}", "-", "-"],
    ]  # fmt: skip
    if bare_rate:
        b = c.median(bare_rate)
        table.append(
            [
                "(info) items/s, mirror on a database without triggers",
                b,
                d,
                f"{b / d:.2f}x",
                "-",
                "-",
            ]
        )
    print(c.table(["figure", "mirror", "dlt", "ratio", "target", "result"], table))
    if triggers:
        print(f"\n(the triggers dropped for the info row: {', '.join(triggers)})")


if __name__ == "__main__":
    main()
