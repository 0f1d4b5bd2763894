raise RuntimeError("a user's types.py must never shadow the standard library")
