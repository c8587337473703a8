"""The ``pvae`` command: ``pvae train | eval | sample | apply | compare | bdmc | demo``.

Bad input prints one line (``pvae: error: ...``) and exits with status 2; SIGINT and SIGTERM end
a run with 130 and 143, the last checkpoint kept.
"""

from __future__ import annotations

import signal
import sys
import warnings

from pvae.cli.common import _flag, _show
from pvae.cli.parser import SIZES, _given, parser
from pvae.util.validate import out_of_memory


class Terminated(BaseException):
    """SIGTERM or SIGHUP: raised inside the work so that files being written are cleaned up. Not
    an ``Exception`` (like ``KeyboardInterrupt``): no ``except Exception`` on the way (a step that
    will not trace or compile falls back to eager) can take it for a failure and carry on."""


def _on_signal(signum, frame):
    raise Terminated(signal.Signals(signum).name)


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """A warning on the command line: one line, ``pvae: warning: ...`` (not Python's file, line and
    source)."""
    print(f"pvae: warning: {str(message).splitlines()[0] if str(message) else category.__name__}",
          file=file or sys.stderr)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args._given = _given(argv)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    shown = warnings.showwarning
    warnings.showwarning = _warning_line
    try:
        if getattr(args, "device", None) is not None:
            from pvae.util.tensors import resolve_device

            resolve_device(args.device)
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"pvae: error: {_line(e)}", file=sys.stderr)
        return 2
    except ImportError as e:
        if "pip install" not in str(e):  # an optional package pvae names (tensorboard): else a bug, shown whole
            raise
        print(f"pvae: error: {_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pvae: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"pvae: stopped by {e}; the last checkpoint is kept", file=sys.stderr)
        return 143
    except (OSError, MemoryError, RuntimeError) as e:
        oom = out_of_memory(e)
        if oom is None and not isinstance(e, OSError):
            raise
        if oom is not None:
            sizes = [f"{_flag(k)} {_show(getattr(args, k))}" for k in SIZES.get(args.command, ()) if hasattr(args, k)]
            oom += f"; lower {', '.join(sizes)}" if sizes else ""
        print(f"pvae: error: {oom or _line(e)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _line(e: BaseException) -> str:
    """The first line of an error's message (a message never spills over several lines)."""
    text = str(e).strip()
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return text.splitlines()[0] if text else type(e).__name__

