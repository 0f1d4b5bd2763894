raise RuntimeError("a user's mcp.py must never shadow the bundled mcp package")
