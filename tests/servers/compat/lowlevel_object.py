"""An mcp 1.x low-level server object, unmodified: decorators, positional version, McpError."""

import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import McpError

app = Server("lowlevel-calc", "1.2.3")


@app.list_tools()
async def list_tools() -> list[types.Tool]:
    schema = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}
    return [types.Tool(name="add", description="Add two numbers", inputSchema=schema),
            types.Tool(name="boom", description="Fail", inputSchema={"type": "object"})]


@app.call_tool()
async def call_tool(name: str, arguments: dict) -> list[types.TextContent]:
    if name == "add":
        return [types.TextContent(type="text", text=f"{arguments['a'] + arguments['b']:g}")]
    if name == "boom":
        raise ValueError("it broke")
    raise McpError(types.ErrorData(code=-32602, message=f"unknown tool {name}"))


@app.list_resources()
async def list_resources() -> list[types.Resource]:
    return [types.Resource(uri="memo://one", name="one", mimeType="text/plain")]


@app.read_resource()
async def read_resource(uri) -> str:
    return f"memo {uri.host}"


@app.list_prompts()
async def list_prompts() -> list[types.Prompt]:
    return [types.Prompt(name="greet", description="Say hello")]


@app.get_prompt()
async def get_prompt(name: str, arguments: dict | None) -> types.GetPromptResult:
    return types.GetPromptResult(messages=[types.PromptMessage(
        role="user", content=types.TextContent(type="text", text=f"hello from {app.request_context.request_id}"))])
