"""``python -m musetalk_cli``: the ``musetalk`` command."""

import sys

from .main import main

sys.exit(main())
