"""``python -m gateway.cli``: the ``gatekeeper`` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
