"""Project wiring: CI runs exactly the README's test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_block_after(heading_text):
    readme = (ROOT / "README.md").read_text()
    start = readme.index(heading_text)
    match = re.search(r"```bash\n(.*?)\n```", readme[start:], re.S)
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command():
    command = _readme_block_after("The tests (this is what `.ci/run` runs")
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    assert command in ci_lines
    assert "pytest" in command and "set -euo pipefail" in ci_lines


def test_readme_main_job_installs_what_it_needs():
    command = _readme_block_after("The main job")
    for piece in ("dataset-fashion-mnist", "requirements.txt", "-e .", "hdml-tf demo"):
        assert piece in command
