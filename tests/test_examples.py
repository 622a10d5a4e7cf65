"""Every script in ``examples/`` runs, as a user would run it, and says what it claims.

Each example runs in its own process with the real bundled model and a work
folder (or store) under pytest's temporary folder, and its printed report is
checked: what was computed, what came from the cache, which source answered.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def launch(script: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run an example from the repository root; it must succeed (output shown if not)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=EXAMPLES.parent,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def run(script: str, *args: str | Path) -> str:
    """Run an example from the repository root; its stdout."""
    return launch(script, *args).stdout


def numbers(pattern: str, text: str) -> tuple[int, ...]:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return tuple(int(g) for g in match.groups())


def test_every_example_is_tested_here() -> None:
    tested = {name[len("test_") :] + ".py" for name in globals() if name.startswith("test_")}
    assert set(SCRIPTS) <= tested, f"examples without a test: {set(SCRIPTS) - tested}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_docstring_says_what_it_shows_and_how_to_run_it(script: str) -> None:
    docstring = ast.get_docstring(ast.parse((EXAMPLES / script).read_text("utf-8")))
    assert docstring and len(docstring.splitlines()) > 2, f"{script} needs a module docstring"
    assert f"python examples/{script}" in docstring


@pytest.mark.model
def test_quickstart(tmp_path: Path) -> None:
    # One folder of the corpus keeps the test quick; the README runs it all.
    recipes = EXAMPLES / "corpus" / "recipes"  # 122 paragraphs, 10 of them repeats
    args = ("--store", f"sqlite:///{tmp_path / 'cache.db'}", "--corpus", recipes)
    out = run("quickstart.py", *args)
    texts, distinct, duplicates = numbers(
        r"(\d+) paragraphs from .*: (\d+) distinct, (\d+) duplicates", out
    )
    assert duplicates == texts - distinct > 0
    stats = r": (\d+) hits, (\d+) misses, (\d+) computed, (\d+) duplicates"
    cold = "nothing cached yet, the model computed every vector"
    warm = "all from the cache, no model call"
    first = numbers(rf"pass 1 \({cold}\): {texts} vectors .*{stats}", out)
    assert first == (0, distinct, distinct, duplicates)
    second = numbers(rf"pass 2 \({warm}\): {texts} vectors .*{stats}", out)
    assert second == (distinct, 0, 0, duplicates)

    # Run again on the same store: both passes say they came from the cache.
    again = run("quickstart.py", *args)
    for n in (1, 2):
        assert numbers(rf"pass {n} \({warm}\): .*{stats}", again) == second
    assert cold not in again


@pytest.mark.model
def test_retriever_rag(tmp_path: Path) -> None:
    out = run("retriever_rag.py", "--workdir", tmp_path)
    chunks, computed, cached = numbers(
        r"indexed (\d+) chunks: (\d+) vectors computed, (\d+) from the cache", out
    )
    assert chunks > 0 and computed > 0 and cached == chunks - computed  # repeats in-batch
    # Each question retrieves from the file that answers it, and the prompt
    # an LLM would read carries the answer itself, not only its file's name.
    sections = out.split("\n=== ")[1:]
    expected = [
        ("handbook/vacation-policy.md", "carry **up to five unused vacation days** into the next"),
        (
            "products/halcyon-k2-kettle/troubleshooting.md",
            "| **E1** | 1 | **Dry boil**: the kettle was switched on empty",
        ),
    ]
    for section, (source, answer) in zip(sections, expected, strict=True):
        question = section.split(" (query vector", 1)[0]
        assert f"  1. {source}" in section
        assert len(re.findall(r"(?m)^  \d+\. ", section)) == 4  # the default k
        prompt = section.split("prompt for the LLM:\n", 1)[1]
        context, asked = prompt.split("\nHuman: ", 1)
        assert f"[{source}]" in context
        assert answer in context, f"{question!r}: the answer is not in the context"
        assert asked.startswith(question)
    assert "--index" in out and (tmp_path / "index" / "manifest.json").is_file()

    # Same work folder again: every chunk and question comes from the cache.
    again = run("retriever_rag.py", "--workdir", tmp_path, "-k", "2")
    assert numbers(r"indexed (\d+) chunks: (\d+) vectors computed", again) == (chunks, 0)
    assert again.count("(query vector from the cache)") == 2


@pytest.mark.model
def test_reindexing(tmp_path: Path) -> None:
    done = launch("reindexing.py", "--workdir", tmp_path)
    out = done.stdout
    chunks, computed, cached = numbers(
        r"ingest Flat: (\d+) chunks, (\d+) vectors computed, (\d+) from the cache", out
    )
    assert chunks == computed > 0 and cached == 0
    for factory in ("HNSW32", "IVF4,PQ16x4"):
        rebuilt = numbers(
            rf"reindex {re.escape(factory)}: (\d+) chunks, (\d+) vectors "
            r"computed, (\d+) from the cache",
            out,
        )
        assert rebuilt == (chunks, 0, chunks)  # zero model calls
    answers = re.findall(r"top answer: \[([-\d.]+)\] (\S+)", out)
    assert [source for _, source in answers] == ["halcyon-k2-kettle/troubleshooting.md"] * 3
    # Re-ranked from the cache, the PQ index's one answer is the exact best
    # (k=1 re-scores a pool of candidates, not only 4), scored as on Flat.
    assert len({score for score, _ in answers}) == 1, answers
    # The docstring's training warning is cachedvec's one line, not FAISS's.
    docstring = ast.get_docstring(ast.parse((EXAMPLES / "reindexing.py").read_text("utf-8")))
    assert docstring
    docstring = " ".join(docstring.split())  # as one line, like the warning
    said = re.search(
        r"``(training IVF4,PQ16x4 on only \d+ vectors: k-means wants [^`]*?); \.\.\.``", docstring
    )
    assert said, docstring
    warnings = [line for line in done.stderr.splitlines() if "k-means wants" in line]
    assert len(warnings) == 1 and said.group(1) in warnings[0], done.stderr
    assert f"on only {chunks} vectors" in warnings[0]
    assert "training points" not in done.stderr  # FAISS's "please provide at least ..."


@pytest.mark.model
def test_switching_models(tmp_path: Path) -> None:
    out = run("switching_models.py", "--workdir", tmp_path)
    namespaces = re.findall(r"model namespace: +(\S+)", out)
    assert len(set(namespaces)) == 2
    chunks, computed, _ = numbers(
        r"1\. ingest, default model: +(\d+) chunks, (\d+) computed, "
        r"(\d+) from the cache",
        out,
    )
    assert chunks == computed > 0
    (kettle, trial_computed) = numbers(
        r"2\. trial, prompted model: +(\d+) kettle chunks, "
        r"(\d+) computed",
        out,
    )
    assert 0 < kettle == trial_computed < chunks
    # Only what the prompted model's namespace lacked: the bicycle chunks.
    assert numbers(r"3\. switch to prompted: +(\d+) chunks, (\d+) computed, (\d+) from", out) == (
        chunks,
        chunks - kettle,
        kettle,
    )
    assert "asking it with the old model is refused" in out
    assert numbers(
        r"4\. switch back to default: +(\d+) chunks, (\d+) computed, (\d+) from", out
    ) == (chunks, 0, chunks)
    answers = re.findall(r"top answer: \[[-\d.]+\] (\S+)", out)
    assert answers == ["kestrel-c7-bicycle/troubleshooting.md"] * 3
