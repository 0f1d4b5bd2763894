"""Tools, a resource and a prompt that every fixture server registers.

Works on fastmcp's FastMCP and on the SDK's MCPServer alike.
"""

import sys

GREETING = "Hello from demo"


def register(server):
    """Add the demo tools, resource and prompt to server and return it."""

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def argv() -> str:
        """Return the server arguments mcprun passed (sys.argv[1:]) joined by spaces."""
        return " ".join(sys.argv[1:])

    @server.resource("demo://greeting")
    def greeting() -> str:
        """A fixed greeting."""
        return GREETING

    @server.prompt()
    def summarize(topic: str) -> str:
        """Ask for a summary of a topic."""
        return f"Summarize {topic} briefly."

    return server
