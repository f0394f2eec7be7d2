"""`python -m graphc ...` is the `graphc` command."""
import sys

from graphc.tools.cli import main

sys.exit(main())
