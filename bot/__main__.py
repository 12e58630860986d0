"""``python -m bot`` is the ``loopbot`` command."""

import sys

from bot.cli import main

sys.exit(main())
