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


def test_index_links_resolve_and_reach_every_page():
    links = re.findall(r"\]\(([^)]+\.md)\)", (DOCS / "index.md").read_text())
    assert links and all((DOCS / link).is_file() for link in links)
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")} - {"index.md"}
    assert sorted(pages - set(links)) == [], "pages the index does not link"


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


def _api_objects():
    """The identifiers docs/api.md renders: each ``::: name`` and the canonical path
    (module.qualname) of its object, and of its members where it is rendered with members."""
    import importlib
    import inspect

    text = (DOCS / "api.md").read_text()
    names = set()
    for name, options in re.findall(r"^::: (\S+)\n((?:    .*\n)*)", text, re.M):
        obj = _resolve(name, importlib)
        names.update({name, _canonical(obj)})
        listed = re.search(r"members: \[(.*)\]", options)
        if listed:
            names.update(f"{name}.{m.strip()}" for m in listed.group(1).split(","))
            names.update(_canonical(getattr(obj, m.strip())) for m in listed.group(1).split(","))
        elif "members: true" in options:
            for member, value in inspect.getmembers(obj):
                names.update({f"{name}.{member}", _canonical(value)})
    return names


def _canonical(obj):
    """``module.qualname`` of a function or class, the name of a module (None otherwise)."""
    import inspect

    if inspect.ismodule(obj):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def _resolve(name, importlib):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(name)


def test_docstrings_use_mkdocstrings_cross_references_that_resolve():
    """No Sphinx roles (mkdocstrings shows them as literal text), and every ``[`x`][pvae.y]``
    cross-reference points at an object the API page renders (else it shows as literal text)."""
    sources = list((DOCS.parent / "pvae").rglob("*.py"))
    roles = [f"{p.name}: {m}" for p in sources for m in re.findall(r":(?:class|func|mod|meth|data|attr):`[^`]*`",
                                                                     p.read_text())]
    assert not roles, roles
    rendered = _api_objects()
    refs = {t for p in sources for t in re.findall(r"\]\[(pvae[\w.]*)\]", p.read_text())}
    assert refs
    unresolved = sorted(t for t in refs if t not in rendered)
    assert not unresolved, unresolved


def test_math_is_served_from_the_site():
    config = (DOCS.parent / "mkdocs.yml").read_text()
    scripts = re.findall(r"^  - (\S+\.js)$", config, re.M)
    assert scripts and not [s for s in scripts if "://" in s]
    assert all((DOCS / s).is_file() for s in scripts)
    assert (DOCS / "assets/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff").is_file()
