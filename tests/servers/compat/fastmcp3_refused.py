"""A fastmcp 2.x file using an API fastmcp 4 removed with no faithful mapping (tool_serializer=)."""

import json

from fastmcp import FastMCP

mcp = FastMCP("Serializer", tool_serializer=lambda data: json.dumps(data, indent=4))
