"""
Password files, credential checkers and the realm guarding /private/.
"""
