"""The tutorials' code runs as written; every page the index links exists."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


@pytest.mark.parametrize("page, blocks", [("custom-model.md", 4), ("hierarchical.md", 2), ("conditional.md", 3),
                                         ("own-pyro-program.md", 3)])
def test_tutorial_runs(page, blocks):
    text = (DOCS / "tutorials" / page).read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(code) >= blocks
    exec(compile("\n".join(code), page, "exec"), {})


def test_index_links_resolve():
    links = re.findall(r"\]\(([^)]+\.md)\)", (DOCS / "index.md").read_text())
    assert links and all((DOCS / link).is_file() for link in links)


def test_every_public_name_has_a_docstring():
    import inspect

    import pvae

    missing = [name for name in pvae.__all__ if not isinstance(getattr(pvae, name), (dict, str))
               and not inspect.getdoc(getattr(pvae, name))]
    assert not missing, missing


def test_every_docs_page_is_in_the_site_navigation():
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")]
    assert [p for p in pages if p not in nav] == []
