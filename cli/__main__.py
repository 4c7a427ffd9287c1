"""`python -m pretrax.cli ...` is the `pretrax` command."""

import sys

from pretrax.cli.main import main

if __name__ == "__main__":
  sys.exit(main())
