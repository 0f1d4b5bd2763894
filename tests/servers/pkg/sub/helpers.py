NAME = "Demo"
