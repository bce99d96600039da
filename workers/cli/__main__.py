"""`python -m workers.cli ...`: the `cased` command line."""
import sys

from workers.cli.commands import main

sys.exit(main())
