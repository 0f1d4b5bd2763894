"""Every spec form over every transport, through fastmcp's Client and the official SDK client."""

import pytest
from conftest import (
    DEMO_RESULT, SERVERS, exercise_fastmcp, exercise_sdk, run_async, serving, stdio_transport,
)

SPECS = {
    "fastmcp file": ["fastmcp_server.py"],
    "sdk file": ["sdk_server.py"],
}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_stdio_fastmcp_client(token, spec):
    result = run_async(exercise_fastmcp(stdio_transport(token, *spec, cwd=SERVERS)))
    assert result == DEMO_RESULT


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_stdio_sdk_client(token, spec):
    result = run_async(exercise_sdk("stdio", [str(SERVERS / spec[0])], token))
    assert result == DEMO_RESULT


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_http_both_clients(token, spec, transport):
    with serving(token, *spec, transport=transport, cwd=SERVERS) as server:
        assert run_async(exercise_fastmcp(server.url)) == DEMO_RESULT
        assert run_async(exercise_sdk(transport, server.url)) == DEMO_RESULT
