"""Prints the chaos suite's summary at the end of the session, when its rounds ran."""

from __future__ import annotations

import pytest

from tests.chaos.summary import SUMMARY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = SUMMARY.report()
    if lines:
        terminalreporter.section("fault injection")
        for line in lines:
            terminalreporter.write_line(line)
