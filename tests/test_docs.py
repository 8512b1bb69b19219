"""The front door stays true: the README's layout names every module, every page under
docs/ is linked from it, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_layout_names_every_module():
    for package in ("common", "tasks", "worker"):
        for module in sorted((ROOT / package).rglob("*.py")):
            if module.name not in ("__init__.py", "__main__.py"):
                assert f"`{module.name}`" in README, (
                    f"{package}/{module.name} is missing from the README's layout"
                )


def test_every_docs_page_is_linked_and_every_link_resolves():
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages and all(f"(docs/{page})" in README for page in pages)
    for document in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in LINK.findall(document.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")):
                assert (document.parent / target).exists(), f"{document.name} links to missing {target}"


def test_the_readme_stays_a_front_door():
    assert "make demo" in README and "make test" in README
    assert len(README.splitlines()) <= 150
