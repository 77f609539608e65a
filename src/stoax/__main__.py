"""``python -m stoax`` is the ``stoax`` command."""

import sys

from stoax.cli import main

sys.exit(main())
