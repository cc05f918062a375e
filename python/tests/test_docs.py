"""The repository stands alone: its documentation links resolve inside it, and no file
cites design material that a clone does not have (docs/spec.md and docs/design.md are
the specification and the design)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

DOCS = REPO_ROOT / "docs"
pytestmark = pytest.mark.skipif(not (DOCS / "spec.md").is_file(),
                                reason="needs the repository checkout (docs/)")

# Written in two parts so that this file does not match itself.
OUTSIDE = ("ARCHITECTURE" + ".md", "shared" + "/design", "../" + "shared/")
TEXT_SUFFIXES = {".md", ".py", ".cpp", ".h", ".td", ".cu", ".cuh", ".c", ".txt", ".json",
                 ".test", ".mlir", ".sh", ".toml", ".cfg", ".in", ".yml", ".yaml"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _repository_files():
    for root, dirs, files in os.walk(REPO_ROOT):
        # Build trees, caches and hidden directories (.git) are not the repository's text.
        dirs[:] = [d for d in dirs if not d.startswith((".", "build", "__pycache__"))]
        for name in files:
            p = Path(root) / name
            if p.suffix in TEXT_SUFFIXES or name in ("CMakeLists.txt", "run"):
                yield p


def test_no_reference_leaves_the_repository():
    found = []
    for p in _repository_files():
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if any(s in line for s in OUTSIDE):
                found.append(f"{p.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


def _markdown_files():
    return [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: p.name)
def test_markdown_links_resolve(md):
    broken = []
    for target in LINK.findall(md.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        if not (md.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{md.name}: links to missing files: {broken}"


def test_the_specification_covers_what_the_code_cites():
    """Code cites spec items 3.1-3.9 and sections 2-6; each must exist as a heading."""
    headings = [line for line in (DOCS / "spec.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("#")]
    for item in [f"3.{i} " for i in range(1, 10)] + [f"{s}. " for s in range(1, 7)]:
        assert any(h.split(" ", 1)[1].startswith(item) for h in headings), item
