"""`python -m certok_agent` and the zipapp's entry point."""

import sys

from certok_agent.cli import main

sys.exit(main())
