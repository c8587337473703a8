"""The tutorial's code runs as written; every page the index links exists."""

import re
from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"


def test_custom_model_tutorial_runs():
    text = (DOCS / "tutorials" / "custom-model.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    exec(compile("\n".join(blocks), "custom-model.md", "exec"), {})


def test_index_links_resolve():
    links = re.findall(r"\]\(([^)]+\.md)\)", (DOCS / "index.md").read_text())
    assert links and all((DOCS / link).is_file() for link in links)
