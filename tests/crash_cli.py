"""`parecer` killed at a named step: the crash tests' wrapper around the CLI.

    python -m tests.crash_cli <step> <parecer arguments...>

Sets parecer.batch.checkpoint_hook (the batch driver's test seam) so the process kills
itself with SIGKILL (no cleanup, no finally, like a crash) when it reaches <step>, then runs
the CLI with the remaining arguments. Production code reads no environment variable for it.
"""

from __future__ import annotations

import os
import signal
import sys

from parecer import batch, cli


def main() -> None:
    step, args = sys.argv[1], sys.argv[2:]

    def crash(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    batch.checkpoint_hook = crash
    sys.argv = ["parecer", *args]
    cli.main()


if __name__ == "__main__":
    main()
