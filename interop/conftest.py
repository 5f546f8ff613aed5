"""pytest wiring of the interop suite: process teardown and failure reports with dht-node stderr."""

import pytest

from harness import ProcessGroup


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def procs(request):
    """The child processes of one test; all stopped at teardown, their output shown when it failed."""
    group = ProcessGroup()
    yield group
    outcome = getattr(request.node, "report_call", None)
    if outcome is not None and outcome.failed:
        print(group.report())
    group.stop_all()
