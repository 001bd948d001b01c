"""``python -m bertbeam.cli``: the ``bertbeam`` command, for environments without its script."""

import sys

from bertbeam.cli.main import main

sys.exit(main())
