"""`python -m nntrace` is the `nntrace` command."""
import sys

from nntrace.cli import main

sys.exit(main())
