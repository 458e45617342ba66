"""Rewrite the code dependencies of dvc.yaml's stages from the flows' imports.

    python tests/dvc_deps.py

Each stage's ``.py`` deps become app/cli.py plus the files of every module its flow
imports (tests/unit/test_dvc_pipeline.py checks the same lists); the other deps, the
comments and the layout of the file stay as they are."""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from import_graph import closure, modules  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGE_FLOWS = {"ingest": "flows.ingest", "labels": "flows.labels", "pretrain": "flows.pretrain",
               "evaluate": "flows.evaluate", "adapt": "flows.adapt", "promote": "flows.promote"}


def code_of(flow: str) -> list[str]:
    files = modules()
    return sorted({"app/cli.py"} | {str(files[m].relative_to(ROOT)) for m in closure(flow)})


def rewrite(text: str) -> str:
    out, stage, in_deps, written = [], None, False, False
    for line in text.splitlines():
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            stage, in_deps, written = m.group(1), False, False
        if re.match(r"^    deps:\s*$", line):
            in_deps = True
            out.append(line)
            continue
        if in_deps and re.match(r"^      - ", line):
            if line.strip().endswith(".py"):
                if not written:
                    out.extend(f"      - {path}" for path in code_of(STAGE_FLOWS[stage]))
                    written = True
                continue
        elif in_deps:
            in_deps = False
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    path = ROOT / "dvc.yaml"
    path.write_text(rewrite(path.read_text()))
    print(f"rewrote the code deps of {', '.join(STAGE_FLOWS)} in {path}")
