"""`python -m humwatch` is the `humwatch` command."""
import sys

from humwatch.cli import main

sys.exit(main())
