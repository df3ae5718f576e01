"""
The resources that route modules mount as branches: static files, CGI
scripts, WSGI applications and the reverse proxy.
"""
