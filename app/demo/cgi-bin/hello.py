#!/usr/bin/env python3
"""
A CGI script with a form: GET shows it, POST greets the name it was sent.
"""

import html
import os
import sys
from urllib.parse import parse_qs

FORM = (
    '<form method="POST" action="{action}">\n'
    '<label>Your name: <input name="name" type="text"></label>\n'
    '<input type="submit" value="Say hello">\n</form>'
)


def page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        '<link rel="stylesheet" href="/static/style.css"></head>\n'
        f'<body>\n{body}\n<p><a href="/">Back to the index</a></p>\n</body></html>\n'
    ).encode()


def main() -> None:
    method = os.environ.get("REQUEST_METHOD", "GET")
    action = html.escape(os.environ.get("SCRIPT_NAME", ""), quote=True)
    status = "200 OK"
    if method == "POST":
        length = int(os.environ.get("CONTENT_LENGTH") or 0)
        fields = parse_qs(sys.stdin.buffer.read(length).decode("utf-8", "replace"))
        name = fields.get("name", [""])[0].strip() or "stranger"
        body = page("Hello", f"<p>Hello, {html.escape(name)}!</p>")
    elif method in ("GET", "HEAD"):
        body = page("Hello", "<h1>Hello</h1>\n" + FORM.format(action=action))
    else:
        status = "405 Method Not Allowed"
        body = page("405 Method Not Allowed", "<p>GET or POST, please.</p>")
    head = f"Status: {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
    if status.startswith("405"):
        head += "Allow: GET, HEAD, POST\r\n"
    sys.stdout.buffer.write(head.encode() + b"\r\n" + body)


main()
