"""`k3s` command line: `server`, `certificate rotate-ca`, `--version`."""

from __future__ import annotations

import sys
from typing import List, Optional

from . import VERSION, log

USAGE = f"""NAME:
   k3s - Kubernetes, but small and simple (test emulator)

USAGE:
   k3s [global options] command [command options] [arguments...]

VERSION:
   {VERSION}

COMMANDS:
   server       Run management server
   certificate  Manage K3s certificates (rotate-ca)
"""


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            print(USAGE)
            return 0
        if args[0] in ("-v", "--version", "version"):
            print(f"k3s version {VERSION} (emulator)\ngo version go1.22.9")
            return 0
        if args[0] == "server":
            from . import server

            return server.run(args[1:])
        if args[0] == "certificate" and len(args) > 1 and args[1] == "rotate-ca":
            from . import rotateca

            return rotateca.run(args[2:])
        log.fatal(f"the emulator does not implement: k3s {' '.join(args[:2])}")
    except log.Fatal as exc:
        return int(exc.code or 1)


if __name__ == "__main__":
    sys.exit(main())
