"""Every relative link and anchor in the README and docs/ leads somewhere (stdlib only).

    python3 .ci/check_links.py            # exit status 1 and one line per broken link

A link ``[text](path#anchor)`` must name a file of the repository; its anchor must be one of
the headings of that file, made into an anchor as GitHub does (lower case, punctuation but
``-`` and ``_`` removed, spaces to ``-``, repeats numbered ``-1``, ``-2``). Links to other
sites are not fetched (CI has no internet); links inside code blocks are not links.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.M | re.S)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a file's headings."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", markdown).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        text = re.sub(r"`|\*\*|\*|<[^>]+>", "", match.group(1))
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    problems = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        where = (path.parent / file).resolve() if file else path
        line = text.count("\n", 0, match.start()) + 1
        if not where.exists():
            problems.append(f"{path.relative_to(ROOT)}:{line}: {target}: no such file")
        elif anchor and where.suffix == ".md"\
                and anchor not in anchors(where.read_text(encoding="utf-8")):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {target}: no heading "
                            f"#{anchor} in {where.relative_to(ROOT)}")
    return problems


def main() -> None:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems = [p for f in files if f.is_file() for p in broken(f)]
    if problems:
        raise SystemExit("broken links:\n  " + "\n  ".join(problems))
    print(f"links: {len(files)} files, every relative link and anchor resolves")


if __name__ == "__main__":
    main()
