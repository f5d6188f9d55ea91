"""Every relative link and image in README.md and docs/*.md resolves: the file exists and, for a `#anchor` into a
Markdown file, so does the heading (GitHub's slugs). External http(s) links are not fetched."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets (an image inside a link).
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s)>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
        elif fence is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lowercased, punctuation dropped except hyphens, spaces to hyphens."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_ markers, not snake_case
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file: heading slugs (repeats get -1, -2, ...) and HTML id/name attributes."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        prose = INLINE_CODE.sub("", line)
        found += [(number, target) for target in INLINE_LINK.findall(prose)]
        found += [(number, target) for target in HTML_LINK.findall(prose)]
        definition = REFERENCE_DEFINITION.match(prose)
        if definition:
            found.append((number, definition.group(1)))
    return found


def broken_links(path: Path) -> list[str]:
    """What does not resolve, as 'file:line: target (why)'."""
    problems = []
    for number, target in links(path):
        if EXTERNAL.match(target):
            continue  # http(s), mailto: not fetched
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{number}: {target}"
        file_part, _, fragment = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{where} (no such file)")
        elif fragment and destination.suffix == ".md" and unquote(fragment).lower() not in anchors(destination):
            problems.append(f"{where} (no heading with that anchor in {destination.name})")
    return problems


def test_the_documents_exist():
    assert (REPO / "README.md").is_file()
    assert len(DOCS) > 5


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_resolves(path):
    assert not broken_links(path), "broken links:\n" + "\n".join(broken_links(path))


def test_the_readme_links_the_results_and_shows_images():
    targets = [target for _, target in links(REPO / "README.md")]
    assert any(target.startswith("docs/results.md") for target in targets)
    assert any(target.startswith("docs/images/") for target in targets)


def test_github_slugs():
    assert github_slug("Where results go") == "where-results-go"
    assert github_slug("Is SSPO better than GSPO here? `sspo compare`") == "is-sspo-better-than-gspo-here-sspo-compare"
    assert github_slug("Memory: micro-batches and gradient checkpointing") == (
        "memory-micro-batches-and-gradient-checkpointing"
    )
    assert github_slug("What `update_attention: auto` and the fused AdamW bought (Zen 5)") == (
        "what-update_attention-auto-and-the-fused-adamw-bought-zen-5"
    )
    assert (
        github_slug("2026-12-02, AMD EPYC Zen 5 (family 26 model 2)") == "2026-12-02-amd-epyc-zen-5-family-26-model-2"
    )
    assert github_slug("Searching instead of gridding: `sspo sweep --search`") == (
        "searching-instead-of-gridding-sspo-sweep---search"
    )
    assert github_slug("See [the docs](docs/x.md) *now*") == "see-the-docs-now"


def test_the_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Real heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](docs/other.md#real-heading) [fine too](#page) [web](https://example.com/nothing)\n"
        "![gone](docs/images/missing.png)\n"
        "[no heading](docs/other.md#invented-heading)\n"
        "```bash\n[in code](not/checked.md)\n```\n"
        "`[in inline code](not/checked.md)`\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "docs/images/missing.png (no such file)" in problems[0]
    assert "docs/other.md#invented-heading (no heading" in problems[1]
