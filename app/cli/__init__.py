"""
The command line: options into a L{app.config.Config}, logging, workers, and
the C{passwd} command.
"""
