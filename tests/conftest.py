"""pytest's fixtures; the helpers they and the tests share are in helpers.py."""

import uuid

import pytest
from helpers import kill_token


@pytest.fixture
def token() -> str:
    """A per-test token; every process started with child_env() dies with the test."""
    value = uuid.uuid4().hex
    yield value
    kill_token(value)
