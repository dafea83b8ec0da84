"""`python -m cli ...` is `ledgerq ...` (how `ledgerq dev` starts its children, and the tests)."""

import sys

from cli.main import main

sys.exit(main())
