"""The ``pvae`` command, one module per command plus the parser (`pvae.cli.parser`)."""

from pvae.cli.common import MODEL_CHOICES, compile_option
from pvae.cli.main import main
from pvae.cli.parser import markdown_reference, parser

__all__ = ["main", "parser", "markdown_reference", "MODEL_CHOICES", "compile_option"]
