"""``python -m pvae.cli`` (``--markdown``: the CLI reference page, docs/cli.md)."""

import sys

from pvae.cli.main import main
from pvae.cli.parser import markdown_reference

if sys.argv[1:] == ["--markdown"]:
    print(markdown_reference(), end="")
    sys.exit(0)
sys.exit(main())
