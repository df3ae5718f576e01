"""
The areas of the site, one module each; every module holds a Klein app.
"""
