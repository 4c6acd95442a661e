"""The README stays a newcomer's page, and its status box stays true where a test can read it: every make target it
names exists (and CI runs those it says CI runs), every file it names exists, every test file holds tests, every
figure it quotes is in docs/BENCHMARKS.md's summary table, and every page in docs/ is in its table of contents.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_readme.py`.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def block(text: str, name: str) -> str:
    """The text between `<!-- name -->` and `<!-- /name -->`."""
    found = re.findall(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", text, re.S)
    assert len(found) == 1, f"README.md needs exactly one <!-- {name} --> ... <!-- /{name} --> block"
    return found[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of the markdown table in `text` (header and rule skipped)."""
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row] for row in rows[2:]]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


STATUS = table_rows(block(README, "status"))


def test_readme_is_short_and_ordered():
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert len(README.splitlines()) <= 170, "README.md grew past a first read: move detail into docs/"
    assert headings[:6] == ["Why this one", "Status: what is verified where", "Install", "The two commands",
                            "Quick start on your own data", "Documentation"]


@pytest.mark.parametrize("row", STATUS, ids=[r[0][:40] for r in STATUS])
def test_each_status_row_names_real_targets_files_and_tests(row):
    what, where, by = row
    targets = re.findall(r"`make ([\w-]+)`", by)
    files = re.findall(r"`((?:tests|scripts|configs)/[\w./-]+)`", by) + re.findall(r"\b(docs/[\w.]+\.md)\b", by)
    assert targets or files, f"status row {what!r} says how it is verified by nothing a reader can run or read"
    missing = sorted(set(targets) - make_targets())
    assert not missing, f"status row {what!r} names make targets the Makefile lacks: {missing}"
    for f in files:
        assert (ROOT / f).is_file(), f"status row {what!r} names {f}, which does not exist"
        if f.startswith("tests/"):
            assert re.search(r"^def test_", (ROOT / f).read_text(), re.M), f"{f} holds no test"
    if "every commit (CI)" in where:  # CI runs .ci/run: each target claimed for CI must be in it
        ci = (ROOT / ".ci" / "run").read_text()
        for t in targets:
            assert re.search(rf"^make {t}\b", ci, re.M), f"status row {what!r} says CI runs make {t}; .ci/run does not"


def benchmark_summary() -> str:
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    start = text.index("## Summary")
    return text[start:text.index("\n## ", start + 1)]


def test_every_figure_in_the_status_box_and_the_why_table_is_in_the_benchmark_summary():
    """A measured figure quoted on the first screen is the current one of docs/BENCHMARKS.md's summary table."""
    summary = benchmark_summary()
    why = README[README.index("## Why this one"):README.index("## Status")]
    quoted = re.findall(r"\b\d+\.\d+\b", " ".join(r[0] for r in STATUS) + why)
    assert quoted, "the status box quotes no measured figure"
    assert [q for q in quoted if q not in summary] == []


def test_every_docs_page_is_in_the_table_of_contents():
    toc = README[README.index("## Documentation"):README.index("## Layout")]
    listed = set(re.findall(r"^\| (docs/\w+\.md) \|", toc, re.M))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert listed == pages, f"not in the README's table: {sorted(pages - listed)}; no such page: {sorted(listed - pages)}"


def test_a_status_row_with_a_missing_target_fails():
    """The row check catches what it should (a made-up target, a file that is gone)."""
    with pytest.raises(AssertionError, match="make targets the Makefile lacks"):
        test_each_status_row_names_real_targets_files_and_tests(["x", "CPU", "`make no-such-target`"])
    with pytest.raises(AssertionError, match="does not exist"):
        test_each_status_row_names_real_targets_files_and_tests(["x", "CPU", "`tests/test_gone.py`"])
