"""The docs stand alone: every `*.md` file a comment, docstring, script or document of the repository names exists
in the repository (relative to its root, to docs/ or to the naming file's folder). Notes kept outside the repository are
not references a reader can follow."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"[\w./-]*\w\.md\b")
TEXT = {".py", ".md", ".sh", ".txt", ".toml", ".ini", ".cfg", ".yml", ".yaml", ""}  # "": Makefile, .ci/run
SKIP = {".git", ".venv", ".venv-vllm", ".venv-openclip", "runs", "__pycache__", ".pytest_cache", "node_modules"}


def dangling(root: Path) -> list[str]:
    """`file:line: name` for every named .md file found neither under `root`, nor under `root`/docs, nor beside the
    naming file. This file's own examples are skipped."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP or part.startswith(".venv") for part in rel.parts) or not path.is_file() \
                or path.resolve() == Path(__file__).resolve():
            continue
        if path.suffix not in TEXT or path.stat().st_size > 1_000_000:
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(lines, 1):
            for name in NAME.findall(line):
                if "//" in name or any((base / name).is_file() for base in (root, root / "docs", path.parent)):
                    continue
                out.append(f"{rel}:{n}: {name}")
    return out


def test_every_named_markdown_file_exists():
    assert dangling(ROOT) == []


def test_a_dangling_name_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "DESIGN.md").write_text("See PLATFORM.md and README.md.\n")
    (tmp_path / "README.md").write_text("Read docs/DESIGN.md, then https://example.org/x/NOTES.md.\n")
    (tmp_path / "a.py").write_text('"""Facts: docs/PLATFORM.md, DESIGN.md, INSTALL.md."""\n')
    assert dangling(tmp_path) == ["a.py:1: docs/PLATFORM.md", "a.py:1: INSTALL.md", "docs/DESIGN.md:1: PLATFORM.md"]


def test_every_built_in_algorithm_is_defined_in_algorithms_md():
    """docs/ALGORITHMS.md has a section (### name) for every built-in of the algorithm's registries."""
    from engine.config.registries import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, LOSSES, TOKEN_SELECTIONS

    text = (ROOT / "docs" / "ALGORITHMS.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^### (\S+)$", text, re.M))
    missing = [f"{r.kind} {e.name}" for r in (ADVANTAGES, LOSSES, KL_ESTIMATORS, AGGREGATIONS, TOKEN_SELECTIONS)
               for e in r.entries()
               if e.origin in r.builtin_modules() and e.name not in headings]
    assert not missing, f"docs/ALGORITHMS.md lacks a section for: {', '.join(missing)}"
