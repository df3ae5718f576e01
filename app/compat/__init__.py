"""
Where the server touches private parts of Twisted, Klein and treq: one
module per upstream, each checked by a test that names what moved.
"""
