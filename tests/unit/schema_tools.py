"""The outside checkers the dashboard and manifest tests run: tsc against the published schemas of
``tests/tools/checked.ts``, the prometheus-operator models' validators, and promtool.

Each is skipped with its reason when missing; ``scripts/setup.sh`` installs them all (the Node tools into
``tests/tools/node_modules``, pinned by its lockfile; promtool from Debian's ``prometheus``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tests" / "tools"
NODE_MODULES = TOOLS / "node_modules"
TSC = NODE_MODULES / "typescript" / "bin" / "tsc"
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "target": "es2022",
        "skipLibCheck": True,
        "types": [],
    },
    "files": ["check.ts"],
}


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is missing: the published schemas are checked with Node tools")
    if not TSC.exists():
        pytest.skip(f"{NODE_MODULES.relative_to(REPO)} is missing: run  bash scripts/setup.sh  (needs npm)")
    return path


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is missing: run  bash scripts/setup.sh  (apt-get install prometheus)")
    return path


def tsc_check(tmp_path: Path, documents: list[tuple[str, Any]]) -> None:
    """Fail unless each document, written as a literal of its type from ``tests/tools/checked.ts``, type-checks."""
    tsc = node()
    work = tmp_path / "tsc"
    work.mkdir()
    (work / "node_modules").symlink_to(NODE_MODULES)
    shutil.copy(TOOLS / "checked.ts", work / "checked.ts")
    (work / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    types = sorted({type_name for type_name, _ in documents})
    lines = [f'import type {{ {", ".join(types)} }} from "./checked";']
    for index, (type_name, document) in enumerate(documents):
        lines.append(f"export const document{index}: {type_name} = {json.dumps(document, indent=2)};")
    source = "\n".join(lines) + "\n"
    (work / "check.ts").write_text(source)
    result = subprocess.run([tsc, str(TSC), "-p", str(work)], cwd=work, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        message = f"tsc rejects a document:\n{result.stdout}{result.stderr}\n(see {work / 'check.ts'})"
        pytest.fail(message, pytrace=False)


def validate_monitors(documents: list[dict[str, Any]]) -> list[str]:
    """The prometheus-operator models' schema errors for each ServiceMonitor or PodMonitor (empty when valid)."""
    node_path = node()
    result = subprocess.run([node_path, str(TOOLS / "validate-monitors.mjs")], input=json.dumps(documents),
                            cwd=TOOLS, capture_output=True, text=True, timeout=60)  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"validate-monitors.mjs failed:\n{result.stdout}{result.stderr}", pytrace=False)
    return json.loads(result.stdout)
