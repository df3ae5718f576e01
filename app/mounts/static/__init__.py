"""
Static files, served safely (see L{app.mounts.static.resource}).
"""
