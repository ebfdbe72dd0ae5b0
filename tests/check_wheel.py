"""Check a built wheel of the project: it holds every data file the code reads, and works installed.

    python -m tests.check_wheel dist/tune_or_prompt-0.1.0-py3-none-any.whl

Run by ``make dist`` (and so by CI). Fails (exit 1, one line per problem) when a data file of
the source tree (adapters, prompt files, safety rules, datasets, probes, configs, phrase
banks, the report) is missing from the wheel, when a console entry point is missing, or
when the packages, installed alone into a scratch folder and imported from another working
directory, cannot find their prompt files and adapters.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bots.cli_args import CommandParser

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmarks", "bots", "domains", "prompts", "training", "webui")
DATA_SUFFIXES = {".yaml", ".json", ".jsonl", ".safetensors", ".png", ".md"}
ENTRY_POINTS = ("tune-or-prompt = bots.cli:main", "tune-or-prompt-ui = ui:main")
# Run inside the installed copy: the prompt files and the adapters load from there.
INSTALLED_CHECK = """
import sys
from pathlib import Path
import bots.registry, prompts
from prompts import available_domains, load_prompt_spec
root = Path(sys.argv[1]).resolve()
assert Path(prompts.__file__).resolve().is_relative_to(root), prompts.__file__
domains = available_domains()
assert domains, "no prompt files found"
for domain in domains:
    load_prompt_spec(domain)
    adapter = bots.registry.PACKAGED_ADAPTERS / domain
    assert (adapter / "adapter_model.safetensors").is_file(), adapter
    assert adapter.resolve().is_relative_to(root), adapter
print("installed wheel: prompts and adapters of", ", ".join(domains), "load from", root)
"""


def expected_data_files() -> list[str]:
    """Every data file under the packages of the source tree, as a path inside the wheel."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts:
                found.append(path.relative_to(REPO).as_posix())
    return found


def problems_in(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next((archive.read(name).decode() for name in names if name.endswith(".dist-info/entry_points.txt")), "")
    problems = [f"missing from the wheel: {name}" for name in expected_data_files() if name not in names]
    problems += [f"missing module: {name}" for name in ("ui.py", "bots/__init__.py", "prompts/loader.py") if name not in names]
    problems += [f"missing console entry point: {line}" for line in ENTRY_POINTS if line not in entry_points]
    problems += [f"test code in the wheel: {name}" for name in names if name.startswith("tests/")]
    return problems


def check_installed(wheel: Path) -> list[str]:
    """Install the wheel alone (no dependencies: they are in this environment) and load from it."""
    with tempfile.TemporaryDirectory() as scratch:
        target, elsewhere = Path(scratch) / "site", Path(scratch) / "cwd"
        elsewhere.mkdir()
        install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(target), str(wheel)]
        done = subprocess.run(install, capture_output=True, text=True, check=False)
        if done.returncode:
            return [f"pip could not install the wheel: {done.stderr.strip().splitlines()[-1:]}"]
        run = subprocess.run([sys.executable, "-P", "-c", INSTALLED_CHECK, str(target)], cwd=elsewhere, env={"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, check=False)
        if run.returncode:
            return [f"the installed wheel does not work: {(run.stderr.strip().splitlines() or ['?'])[-1]}"]
        print(run.stdout.strip())
    return []


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m tests.check_wheel", description="Check that a built wheel holds the data files and works installed.")
    parser.add_argument("wheel", type=Path)
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        parser.error(f"no such wheel: {args.wheel}")
    problems = problems_in(args.wheel) or check_installed(args.wheel)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{args.wheel.name}: {len(expected_data_files())} data files, entry points and installed imports all present")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
