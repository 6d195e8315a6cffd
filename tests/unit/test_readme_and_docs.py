"""The README is a newcomer's five minutes, and no link in it or in docs/ leads nowhere.

The README says what the platform is, the two commands and where everything else is; the rest lives in
docs/ (issue 20). A relative link is followed as GitHub follows it, from the file that holds it; a
`#fragment` must name a heading of the page it points at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_README_BYTES = 12 * 1024

# The README's benchmark write-up ("## Scale and speed" to the next top-level section) is moving to
# docs/benchmarks.md on another branch (issue 20). Until that page exists the section is not counted;
# once it exists, the whole README is held to the limit.
BENCHMARK_SECTION = "## Scale and speed\n"

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def counted_readme_bytes(text: str) -> int:
    if BENCHMARK_SECTION in text and not (ROOT / "docs" / "benchmarks.md").exists():
        start = text.index(BENCHMARK_SECTION)
        following = re.search(r"^## ", text[start + len(BENCHMARK_SECTION) :], flags=re.MULTILINE)
        end = start + len(BENCHMARK_SECTION) + following.start() if following else len(text)
        text = text[:start] + text[end:]
    return len(text.encode("utf-8"))


def test_the_readme_is_at_most_12_kb():
    size = counted_readme_bytes(README.read_text(encoding="utf-8"))
    assert size <= MAX_README_BYTES, (
        f"README.md is {size:,} bytes (at most {MAX_README_BYTES:,}): move the detail into a page of docs/ "
        "and leave a line in the README's map"
    )


def test_the_benchmark_section_exemption_counts_only_that_section():
    text = "# t\n\nintro\n\n## Scale and speed\n\n" + "x" * 100 + "\n\n## Deployment\n\nend\n"
    if (ROOT / "docs" / "benchmarks.md").exists():
        assert counted_readme_bytes(text) == len(text)
    else:
        assert counted_readme_bytes(text) == len("# t\n\nintro\n\n## Deployment\n\nend\n")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def relative_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # code blocks are not links
    text = re.sub(r"`[^`\n]*`", "", text)  # nor is code in a line
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_link_reader_finds_links():
    # Guards the reader itself: the README's map links to every page of docs/ but the generated ones.
    links = relative_links(README)
    assert "docs/commands.md" in links and "docs/contract/decisions.md" in links


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading '{fragment}' in {resolved.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)} links to what is not there: {broken}"


def test_the_readme_maps_every_page_of_docs():
    links = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert not pages - links, f"pages of docs/ the README's map does not name: {sorted(p.name for p in pages - links)}"
