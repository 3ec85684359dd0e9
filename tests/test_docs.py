"""The documentation is part of the product: the site builds with no broken link, the README stays a front door
with the two commands in its first screen, the examples in the pages are valid input, every `python` command shown
to a user parses with that command's own argument parser, and the worked example runs end to end."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHOWN = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
COMMAND_1 = (
    "python -m pip install -q -e . && python -m orchestrator.sweep --space search_spaces/thresholds.yaml && "
    "python -m orchestrator.best --export runs/winner-$(date +%Y%m%d-%H%M%S)"
)


def test_the_readme_is_a_front_door_with_the_two_commands_first():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    first_screen = "\n".join(lines[:30])
    assert COMMAND_1 in first_screen and "\nbash scripts/test.sh\n" in first_screen
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    if not Path(mkdocs).exists():
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' installs it")
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "load_export" in api and "TrainConfig" in api  # the API page is generated from the docstrings


def test_the_search_space_page_examples_are_valid_spaces():
    from orchestrator.space import parse_space

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "search-spaces.md").read_text(), re.S)
    full, params = (yaml.safe_load(b) for b in blocks[:2])
    assert parse_space(full, "docs/search-spaces.md").name == "thresholds"
    raw = dict(full, parameters=params["parameters"])
    raw["search"] = {k: v for k, v in full["search"].items() if k != "start_from"}  # its point names beta only
    raw["fixed"] = {k: v for k, v in full["fixed"].items() if k not in params["parameters"]}
    space = parse_space(raw, "docs/search-spaces.md (parameters)")
    assert {p.name for p in space.params} == set(params["parameters"])


def _shown_commands() -> list[tuple[str, list[str]]]:
    """Every `python -m <module> ...` and `python <script> ...` in a bash block of the pages a user starts from."""
    found = []
    for page in SHOWN:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                line = re.sub(r"\$\([^)]*\)", "X", line.split("  #")[0]).strip()
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words[:1] == ["python"] and words[1:3] != ["-m", "pip"]:
                        found.append((page.name, words[1:]))
    return found


class _Parsed(Exception):
    pass


_PARSE_ARGS = argparse.ArgumentParser.parse_args  # argparse's own, whatever a test has patched since


def _parse_only(monkeypatch, words: list[str]) -> argparse.Namespace:
    """Run the command's own main() until its argument parser has parsed `words`, and no further."""
    seen = {}

    def parse(self, args=None, namespace=None):
        seen["args"] = _PARSE_ARGS(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
    if words[0] == "-m":
        module, argv = importlib.import_module(words[1]), words[2:]
    else:
        spec = importlib.util.spec_from_file_location("shown_script", ROOT / words[0])
        module, argv = importlib.util.module_from_spec(spec), words[1:]
        spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [words[0], *argv])
    with pytest.raises(_Parsed):
        module.main(argv) if words[0] == "-m" else module.main()
    return seen["args"]


def test_every_python_command_shown_parses_with_its_own_parser(monkeypatch):
    commands = _shown_commands()
    modules = {" ".join(w[:2]) for _, w in commands}
    assert {"-m orchestrator.sweep", "-m orchestrator.best", "examples/market_like.py"} <= modules, modules
    for page, words in commands:
        try:
            _parse_only(monkeypatch, words)
        except SystemExit as exc:  # argparse refused a flag the page shows
            pytest.fail(f"{page}: `python {' '.join(words)}` does not parse (exit {exc.code})")


@pytest.mark.slow
def test_the_worked_example_runs_end_to_end_at_smoke_size(tmp_path):
    out = tmp_path / "example"
    example = [str(ROOT / "examples" / "market_like.py"), "--trials", "1", "--epochs", "3", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, *example],
        cwd=ROOT,
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "$ python -m orchestrator.data shard --format market1501" in proc.stdout
    assert (out / "winner" / "model.pt").exists()
    found = re.search(r"(\d+) queries: mAP (\d\.\d+), rank-1 (\d\.\d+)", proc.stdout)
    assert found and int(found.group(1)) > 0 and 0 < float(found.group(2)) <= 1, proc.stdout[-2000:]
