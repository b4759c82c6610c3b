#!/usr/bin/env python3
"""Regenerates the README's provider table from the conformance suite (tests/conformance).

    .venv/bin/python scripts/provider_table.py            # runs the suite, then rewrites the table in README.md
    .venv/bin/python scripts/provider_table.py --from results.jsonl [--check]

The suite writes one JSON line per (provider, scenario) outcome to $FLUX_CONFORMANCE_RESULTS; this script turns
them into a Markdown table between the README markers `<!-- provider-table:start -->` and `<!-- provider-table:end -->`.
`--check` fails (exit 1) when the README's table differs from what the results say.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START, END = "<!-- provider-table:start -->", "<!-- provider-table:end -->"
PROVIDERS = ("local", "docker", "aws")


def run_suite() -> Path:
    out = Path(tempfile.mkstemp(prefix="flux-conformance-", suffix=".jsonl")[1])
    env = {**os.environ, "FLUX_CONFORMANCE_RESULTS": str(out)}
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "tests/conformance", "-q", "-n", "2",
                    "-p", "no:logging"], cwd=REPO, env=env, check=False)
    return out


def table(results: Path) -> str:
    cells: dict[tuple[str, str], str] = {}
    order: list[str] = []
    for line in results.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        if doc["scenario"] not in order:
            order.append(doc["scenario"])
        cells[(doc["scenario"], doc["provider"])] = doc["outcome"]
    providers = [p for p in PROVIDERS if any(k[1] == p for k in cells)]

    def cell(outcome: str | None) -> str:
        if outcome is None:
            return "not run"
        if outcome == "pass":
            return "pass"
        if outcome.startswith("n/a"):
            return "n/a" + (f" ({outcome[4:].strip()})" if outcome[4:].strip() else "")
        return "**FAIL**"

    lines = ["| scenario | " + " | ".join(providers) + " |", "|---|" + "---|" * len(providers)]
    for sc in order:
        lines.append(f"| {sc.replace('_', ' ')} | " + " | ".join(cell(cells.get((sc, p))) for p in providers) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", type=Path, help="results file (JSON lines) instead of running the suite")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the README differs")
    args = ap.parse_args()
    source = args.source or run_suite()
    if not source.is_file() or not source.read_text(encoding="utf-8").strip():
        print(f"provider_table: no results in {source} (did the suite run?)", file=sys.stderr)
        return 1
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"provider_table: {README} lacks the markers {START} / {END}", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table(source)}\n{END}{tail}"
    if args.check:
        if new != text:
            print("provider_table: README.md's provider table is out of date (run scripts/provider_table.py)",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    print(f"provider_table: README.md updated from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
