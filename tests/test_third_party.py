"""A server nobody on the team wrote: duckduckgo-mcp-server from PyPI, run by path as a new user would.

./build test installs it (pinned, hash-checked, packaging/third-party.lock) with --target into
build-cache/third-party; mcprun finds its bs4 dependency because the server file sits in a
package whose root folder goes on sys.path. Only expand_link is called: the other tools reach
the network, which mcprun must never do on its own (and this machine doesn't allow).
"""

import json

import pytest
from helpers import INITIALIZE, INITIALIZED, ROOT, mcprun_command, run_async, serving, stdio_exchange, tools_call

TARGET = ROOT / "build-cache" / "third-party"
SERVER = TARGET / "duckduckgo_mcp_server" / "server.py"
TOOLS = ["expand_link", "fetch_content", "search"]
pytestmark = pytest.mark.skipif(not SERVER.exists(), reason="run './build test' to install the third-party server")


async def list_and_expand(target) -> tuple[list[str], str]:
    from fastmcp import Client

    async with Client(target) as client:
        tools = sorted(tool.name for tool in await client.list_tools())
        result = await client.call_tool("expand_link", {"token": "bogus"}, raise_on_error=False)
    return tools, result.content[0].text


def test_over_stdio_only_protocol_reaches_stdout(token, tmp_path):
    result = stdio_exchange([*mcprun_command(), f"{SERVER}:mcp"],
                            [INITIALIZE, INITIALIZED, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                             tools_call(3, "expand_link", {"token": "bogus"})], token, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert replies[0]["result"]["serverInfo"]["name"] == "ddg-search"
    assert sorted(tool["name"] for tool in replies[1]["result"]["tools"]) == TOOLS
    assert replies[2]["result"]["content"][0]["text"].startswith("Error: Unknown link reference 'bogus'")


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_over_http(token, tmp_path, transport):
    with serving(token, f"{SERVER}:mcp", transport=transport, cwd=tmp_path) as server:
        tools, text = run_async(list_and_expand(server.url))
    assert tools == TOOLS
    assert text.startswith("Error: Unknown link reference 'bogus'")
