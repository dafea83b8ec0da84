"""The README and docs/ stay true to the code: the README's two opening commands, one row per
variable in docs/configuration.md, and every relative link pointing at a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

from api.settings import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) outside code spans; the target ends at whitespace or ")".
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_variable_has_a_row_in_the_configuration_table() -> None:
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in CONFIGURATION.splitlines()
        if line.startswith("| `LEDGERQ_")
    }
    assert {v.name for v in VARIABLES} <= rows, {v.name for v in VARIABLES} - rows


def test_readme_opens_with_the_run_and_test_commands() -> None:
    blocks = README.split("```sh\n")[1:3]
    assert [b.split("\n", 1)[0] for b in blocks] == [
        "pip install uv && uv run ledgerq dev",
        "pip install uv && uv run pytest",
    ]


def _prose(text: str) -> str:
    """The page without fenced code blocks and inline code spans, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in _prose(text).splitlines()
        if line.startswith("#")
    }


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z][a-z+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or ROOT not in (file, *file.parents):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_every_docs_page_opens_with_what_it_is_for() -> None:
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# "), page.name
        assert lines[1] == "" and lines[2].strip(), f"{page.name}: no statement under the title"
        assert lines[3] == "", f"{page.name}: the opening statement is more than one line"


def test_every_cited_bench_file_exists() -> None:
    """Files under docs/bench/ named in code spans (`docs/bench/drain.json`) exist; globs match."""
    missing = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for cited in re.findall(r"`(docs/bench/[^`\s]+)`", text):
            if not list(ROOT.glob(cited)):
                missing.append(f"{page.relative_to(ROOT)}: {cited}")
    assert not missing, missing
