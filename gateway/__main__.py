"""`python -m gateway`: the same as the `smtp-gateway` command."""

import sys

from .cli import main

sys.exit(main())
