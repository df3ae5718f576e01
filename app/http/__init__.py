"""
The HTTP layer: the server's own HTTP/1.1 channel on llhttp, the Request and
Site that keep twisted.web's API above it, the router that calls Klein
routes, the server's pages, the access log and the form parser.
"""
