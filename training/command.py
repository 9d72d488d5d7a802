"""The command line a script was started with, for the manifests and reports that say how a result was made."""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """`python SCRIPT ARGS`: `argv` as main() received it, or the process's own arguments when main() got None."""
    return " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])
