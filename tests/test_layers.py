"""The light paths stay light: checking a policy, or naming the scorers, loads neither torch nor
transformers (only building or running a scorer does). Each check runs in a fresh interpreter, since this
one has long imported both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from policies import DEFAULT_POLICY_PATH

HEAVY = ("torch", "transformers")
LOADED = f"sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})"


def run(code: str) -> dict[str, Any]:
    """Run `code` in a new interpreter; it prints one JSON object."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_scorers_loads_no_torch() -> None:
    found = run(f"import json, sys\nimport scorers\nprint(json.dumps({{'heavy': {LOADED}}}))")
    assert found == {"heavy": []}


def test_policy_validate_loads_no_torch_and_still_checks_the_scorer(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown-method.yaml"
    unknown.write_text(DEFAULT_POLICY_PATH.read_text().replace("method: head", "method: no-such-method"))
    code = f"""
import json, sys
from typer.testing import CliRunner
from commands import app
runner = CliRunner()
good = runner.invoke(app, ["policy", "validate", {str(DEFAULT_POLICY_PATH)!r}])
bad = runner.invoke(app, ["policy", "validate", {str(unknown)!r}])
print(json.dumps({{
    "good": [good.exit_code, good.output],
    "bad": [bad.exit_code, bad.output],
    "heavy": {LOADED},
}}))
"""
    found = run(code)
    assert found["heavy"] == []
    exit_code, output = found["good"]
    assert exit_code == 0 and output.startswith(f"{DEFAULT_POLICY_PATH}: ok ("), output
    exit_code, output = found["bad"]
    assert exit_code == 2
    assert f"{unknown}:" in output and "scorer.method" in output
    assert "unknown scorer method 'no-such-method'" in output
