"""What a test does when a program it needs is not installed: skip locally, fail under CI.

Under CI (``CI=true``) every tool the suite uses is installed by ``scripts/test.sh``, so a
missing one is a broken install, not a reason to skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing_tool(message: str) -> NoReturn:
    """Skip the test with ``message`` (saying which Debian or pip package brings the tool); fail it under CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
