"""Three tools with a git-like naming, for the policy tests: --policy FILE gives callers some of them."""

from fastmcp import FastMCP

mcp = FastMCP("Git")


@mcp.tool
def git_status() -> str:
    return "clean"


@mcp.tool
def git_commit(message: str) -> str:
    return "committed " + message


@mcp.tool
def git_push() -> str:
    return "pushed"
