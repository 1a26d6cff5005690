"""`python -m perf_mcp` is the `perf-mcp` command."""

import sys

from .cli import main

sys.exit(main())
