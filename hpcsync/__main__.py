"""`python -m hpcsync`."""

import sys

from hpcsync.cli import main

sys.exit(main())
