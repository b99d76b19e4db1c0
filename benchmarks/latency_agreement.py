"""Does Model & data's latency agree with `pruning-lab bench`? (issue 13, one latency protocol)

Runs the Model & data page (AppTest, the page's own code path: `ui.latency_panel`), reads the
measurement it showed, then runs `pruning-lab bench --backends dense --batch-size N` in a fresh
process with its default settings (the same `PROTOCOL`) for each of the page's batch sizes. They
agree when the app's own comparison (`timing.compare`) finds no measurable difference between
them (their p10-p90 ranges overlap); it also says whether bench's median lies inside the range
the page reports. It prints the numbers; it is a check to run and read, not a test (timings are
never asserted in the test suite).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.latency_agreement [--model digits-cnn]

Exit status 0 when every batch size agrees, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Measure on the page and with bench, print both and whether they agree."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-cnn")
    args = ap.parse_args(argv)

    from streamlit.testing.v1 import AppTest

    from pruning_core.timing import NO_DIFFERENCE, PROTOCOL, Latency, compare
    from ui.latency_panel import dense_context, latency_cache

    at = AppTest.from_file(str(ROOT / "pages" / "1_model_and_data.py"), default_timeout=300)
    at.session_state["model_ref"] = args.model
    at.run()
    if at.exception:
        print(f"the page failed: {at.exception[0].message}")
        return 1
    got = latency_cache().get(dense_context(args.model))
    if got is None:
        print("the page showed no latency")
        return 1
    page = got.table.set_index("batch_size")
    print(f"protocol: {PROTOCOL.describe()}")
    print(
        f"{'batch':>5}  {'page median [p10, p90] ms':>32}  {'bench median [p10, p90] ms':>32}  agree"
    )
    ok = True
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for b in PROTOCOL.batch_sizes:
        out = subprocess.run(
            [sys.executable, "-m", "pruning_core", "bench", "--model", args.model,
             "--backends", "dense", "--batch-size", str(b), "--json"],
            capture_output=True, text=True, check=True, env=env, cwd=ROOT,
        )  # fmt: skip
        bench = json.loads(out.stdout)["backends"][0]
        p: dict[str, Any] = {str(k): v for k, v in page.loc[b].to_dict().items()}
        shown, timed = (
            Latency(float(r["median_ms"]), float(r["p10_ms"]), float(r["p90_ms"]), 0, b, "cpu", 1)
            for r in (p, bench)
        )
        agree = compare(shown, timed).text == NO_DIFFERENCE
        inside = p["p10_ms"] <= bench["median_ms"] <= p["p90_ms"]
        ok &= agree
        print(
            f"{b:>5}  {p['median_ms']:>10.3f} [{p['p10_ms']:.3f}, {p['p90_ms']:.3f}]"
            f"{'':>4}  {bench['median_ms']:>10.3f} [{bench['p10_ms']:.3f}, {bench['p90_ms']:.3f}]"
            f"{'':>4}  {'yes' if agree else 'NO'} (bench median inside the page's range: "
            f"{'yes' if inside else 'no'})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
