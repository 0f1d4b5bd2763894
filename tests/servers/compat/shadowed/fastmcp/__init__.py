raise RuntimeError("a user's fastmcp/ must never shadow the bundled fastmcp package")
