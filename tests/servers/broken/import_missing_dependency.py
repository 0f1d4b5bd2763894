"""A server that imports a package mcprun does not bundle."""

import not_installed_pkg_xyz  # noqa: F401
from fastmcp import FastMCP

mcp = FastMCP("Broken")
