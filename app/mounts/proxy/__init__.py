"""
The reverse proxy (see L{app.mounts.proxy.exchange}).
"""
