from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import AccessLog, RunningStack, Viewer, running_stack

ACCESS_LOGGER = logging.getLogger("segmentgate.edge.access")
# The Pact library reports usage to its vendor unless PACT_DO_NOT_TRACK is
# set. Setting it keeps the tests from sending anything beyond this machine.
os.environ["PACT_DO_NOT_TRACK"] = "true"


@pytest.fixture(scope="session")
def access_log() -> Iterator[AccessLog]:
    handler = AccessLog()
    ACCESS_LOGGER.addHandler(handler)
    ACCESS_LOGGER.setLevel(logging.INFO)
    yield handler
    ACCESS_LOGGER.removeHandler(handler)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, access_log: AccessLog
) -> Iterator[RunningStack]:
    """One origin and one edge for the session; each test uses its own viewer."""
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.skip("ffmpeg is not installed; `make test` installs it with apt-get")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def viewer(stack: RunningStack) -> Iterator[Viewer]:
    """A new sandbox viewer on the session's stack."""
    viewer = Viewer(stack.stack.origin_url)
    yield viewer
    viewer.close()
