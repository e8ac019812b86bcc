"""``python -m connect`` runs the command line."""

import sys

from connect.cli import main

sys.exit(main())
