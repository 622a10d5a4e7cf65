"""The documentation matches the code: README commands, CI, CLI help and examples.

- The README's two commands (the fenced blocks under "Run the main job" and
  "Run the tests") are single commands; CI runs the test command verbatim;
  the main job ingests the bundled corpus and queries it on the defaults,
  and it works (run here without its install step, in a scratch folder).
- Every ``cachedvec`` command line shown in the README or in a command's
  ``--help`` examples parses: the command and its options exist.
- Every command's ``--help`` works through the installed ``cachedvec`` script.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from cachedvec.cli import main

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
CLI = str(Path(sys.executable).with_name("cachedvec"))
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def readme() -> str:
    if not README.is_file():
        pytest.fail("README.md is missing", pytrace=False)
    return README.read_text("utf-8")


def command_under(heading: str) -> str:
    """The one command in the first fenced block after ``heading``."""
    text = readme()
    match = re.search(rf"^#+\s*{re.escape(heading)}\s*$(.*?)(?=^#|\Z)", text, re.M | re.S)
    if not match:
        pytest.fail(f'README.md has no "{heading}" heading', pytrace=False)
    block = FENCE.search(match.group(1))
    if not block:
        pytest.fail(f'README.md has no fenced block under "{heading}"', pytrace=False)
    lines = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 1, f'"{heading}" must hold exactly one command, found {lines}'
    return lines[0].strip()


def cachedvec_invocations(text: str) -> list[list[str]]:
    """Argument lists of every ``cachedvec ...`` command in ``text``'s lines."""
    found = []
    for line in text.splitlines():
        if "cachedvec " not in line:
            continue
        for part in re.split(r"&&|\|\||;", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue  # prose with an apostrophe, not a command
            if words and Path(words[0]).name == "cachedvec" and len(words) > 1:
                found.append(words[1:])
    return found


def check_parses(args: list[str]) -> None:
    """Parse without running: raises if the command or an option does not exist."""
    name, *rest = args
    command = main.commands.get(name)
    assert command is not None, f"no command {name!r} (in: cachedvec {shlex.join(args)})"
    try:
        command.make_context(name, rest)
    except click.UsageError as exc:
        pytest.fail(f"cachedvec {shlex.join(args)}: {exc.format_message()}")


def test_readme_main_job_is_one_command_on_the_defaults() -> None:
    command = command_under("Run the main job")
    assert re.search(r"cachedvec ingest examples/corpus(\s|$)", command)
    assert re.search(r"cachedvec query ", command)
    assert "--index" not in command and "--store" not in command


def test_readme_test_command_is_what_ci_runs() -> None:
    command = command_under("Run the tests")
    assert "pytest" in command
    ci = (ROOT / ".ci" / "run").read_text("utf-8")
    assert command in ci.splitlines(), f".ci/run does not run {command!r} verbatim"


def test_readme_command_lines_parse() -> None:
    invocations = cachedvec_invocations(readme())
    assert {args[0] for args in invocations} >= {"ingest", "query"}
    for args in invocations:
        check_parses(args)


@pytest.mark.parametrize("command", sorted(main.commands))
def test_help_examples_parse(command: str) -> None:
    help_text = main.commands[command].get_help(click.Context(main.commands[command]))
    examples = help_text.split("Examples:", 1)[1]
    invocations = cachedvec_invocations(examples)
    assert invocations, f"{command} --help shows no example"
    for args in invocations:
        assert args[0] == command
        check_parses(args)


@pytest.mark.parametrize("command", [[], *([c] for c in sorted(main.commands))])
def test_installed_script_help(command: list[str]) -> None:
    done = subprocess.run([CLI, *command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith(f"Usage: cachedvec {' '.join(command)}".rstrip())


@pytest.mark.model
def test_readme_main_job_runs_and_a_second_run_is_all_cache(tmp_path: Path) -> None:
    command = command_under("Run the main job")
    job = command.split("&&", 1)[1] if command.startswith("bash .ci/install") else command
    # A scratch folder that looks like the checkout, so ./.cachedvec lands there.
    for name in (".venv", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)

    def run() -> str:
        done = subprocess.run(
            job, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        return done.stdout

    first = run()
    assert (tmp_path / ".cachedvec" / "index" / "manifest.json").is_file()
    assert re.search(r"vectors: \d+ from the cache, [1-9]\d* computed", first)
    assert "descal" in first.lower()  # the answer is about descaling
    again = run()
    assert re.search(r"chunks: +0 added, 0 updated, [1-9]\d* unchanged, 0 deleted", again)
    assert "vectors: 0 from the cache, 0 computed" in again
