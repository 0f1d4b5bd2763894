"""An mcp 1.x client (run with .venv-mcp1's Python): exercise the demo server, print JSON.

    python mcp1_client.py stdio COMMAND [ARGS...]
    python mcp1_client.py http|sse URL
    python mcp1_client.py call http|sse URL TOOL   (prints 'calling', then the tool's text)
    python mcp1_client.py session stdio|http|sse CALLS COMMAND...|URL
        (CALLS: a JSON list of [tool, arguments]; prints the tool names and each call's text and error flag)

MCP1_BEARER, when set, is sent as 'Authorization: Bearer ...'.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession


def open_streams(kind, target):
    headers = {"Authorization": f"Bearer {os.environ['MCP1_BEARER']}"} if os.environ.get("MCP1_BEARER") else None
    if kind == "stdio":
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=target[0], args=target[1:], env=dict(os.environ))
        streams = stdio_client(params, errlog=open(os.devnull, "w"))
    elif kind == "http":
        from mcp.client.streamable_http import streamablehttp_client

        streams = streamablehttp_client(target[0], headers=headers)
    else:
        from mcp.client.sse import sse_client

        streams = sse_client(target[0], headers=headers)
    return streams


async def call(kind, url, tool):
    async with open_streams(kind, [url]) as (read_stream, write_stream, *_):
        async with ClientSession(read_stream, write_stream) as session:
            await session.initialize()
            print("calling", flush=True)
            result = await session.call_tool(tool, {})
    return result.content[0].text


async def exercise(kind, target):
    async with open_streams(kind, target) as (read_stream, write_stream, *_):
        async with ClientSession(read_stream, write_stream) as session:
            await session.initialize()
            tools = sorted(tool.name for tool in (await session.list_tools()).tools)
            echoed = await session.call_tool("echo", {"text": "hi"})
            resource = await session.read_resource("demo://greeting")
            prompt = await session.get_prompt("summarize", {"topic": "tides"})
    return {
        "tools": tools,
        "echo": echoed.content[0].text,
        "resource": resource.contents[0].text,
        "prompt": prompt.messages[0].content.text,
    }


async def session(kind, calls, target):
    async with open_streams(kind, target) as (read_stream, write_stream, *_):
        async with ClientSession(read_stream, write_stream) as session:
            await session.initialize()
            tools = sorted(tool.name for tool in (await session.list_tools()).tools)
            results = []
            for tool, arguments in calls:
                result = await session.call_tool(tool, arguments)
                results.append({"text": next((c.text for c in result.content if hasattr(c, "text")), None),
                                "error": result.isError})
    return {"tools": tools, "results": results}


if __name__ == "__main__":
    if sys.argv[1] == "session":
        print(json.dumps(asyncio.run(asyncio.wait_for(session(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]), 90))))
        sys.exit()
    if sys.argv[1] == "call":
        print(asyncio.run(call(*sys.argv[2:5])))
        sys.exit()
    print(json.dumps(asyncio.run(asyncio.wait_for(exercise(sys.argv[1], sys.argv[2:]), 60))))
