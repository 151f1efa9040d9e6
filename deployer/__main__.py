"""Entry point: ``python -m deployer``."""

import sys

from deployer.cli import main

if __name__ == "__main__":
    sys.exit(main())
