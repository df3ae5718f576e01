"""
Fakes that stand in for what the server talks to.
"""
