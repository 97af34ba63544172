"""Known defects the conformance suites found in implementations of this repository.

Each entry marks the failing case as a strict xfail, naming the defect: the suite
still runs it, and once the implementation is fixed the case passes (XPASS) and
fails the run until its entry here is removed.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

HERE = Path(__file__).parent

KNOWN_DEFECTS: dict[str, str] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.parent != HERE:
            continue
        for pattern, reason in KNOWN_DEFECTS.items():
            if fnmatch(item.name, pattern):
                item.add_marker(pytest.mark.xfail(reason=f"known defect: {reason}", strict=True))
