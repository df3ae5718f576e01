"""
CGI scripts (see L{app.mounts.cgi.script}).
"""
