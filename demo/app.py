#!/usr/bin/env python3
"""A tiny "blog" app for the rcache demo (Python standard library only).

It plays the part of the Django app from the 2009 blog post: it renders pages and writes
each cacheable page into memcached under the key rcache looks up, so that the next visitor
gets the page from nginx + memcached without the app being asked.

    python3 demo/app.py --port 8001 --memcached 127.0.0.1:11211

What it does per request:
  GET  /anything/         renders a page; if the visitor is anonymous (no `sessionid`
                          cookie), there is no query string and the path is not under
                          /admin/ or /search/, the page is written to memcached under the
                          page's path (e.g. `/about/`), flags 0, before it is returned.
  GET  with sessionid     renders the page "logged in as ..." and never caches it.
  GET  /search/?q=...     search results: never cached (depend on the query string).
  POST /anything/         takes a comment (the request body), shows it, and deletes the
                          page's key from memcached so the next GET renders it afresh.
  GET  /__stats           `requests=N`: how many requests the app has served (not counting
                          /__stats). The demo asks this directly, not through nginx.

The key: rcache's default key is nginx's `$uri` (the decoded, normalised path without the
query string), escaped like stock nginx escapes `$memcached_key` (space, control bytes and
`%` become %XX). The app decodes the path it receives and escapes it the same way, so the
keys agree, also for paths with spaces or %-escapes.

Which path the app sees: nginx-conf/blog.conf hands misses to `location /dynamic/ {
proxy_pass http://app/; }`: the trailing `/` in proxy_pass replaces the `/dynamic/` prefix,
so the app sees the visitor's path (`/about/`), not `/dynamic/about/`. If your config uses
`proxy_pass http://app;` (no URI part) instead, the app would see `/dynamic/about/`; the app
strips a leading `/dynamic` so that it works either way.
"""

import argparse
import html
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NEVER_CACHED = ("/admin/", "/search/")
MAX_KEY = 250  # memcached's limit; rcache treats longer keys as a MISS and never sends them


def memcached_key(path: str) -> bytes:
    """The key rcache sends for `rcache_key $uri;`: the decoded path, escaped like nginx's
    ngx_escape_uri(NGX_ESCAPE_MEMCACHED): bytes 0x00-0x20 and '%' become %XX."""
    raw = urllib.parse.unquote_to_bytes(path)
    return b"".join(
        b"%%%02X" % c if c <= 0x20 or c == 0x25 else bytes([c]) for c in raw
    )


class Memcached:
    """Just enough of the memcached text protocol: set and delete over a raw socket."""

    def __init__(self, addr: str, timeout: float = 1.0):
        host, _, port = addr.rpartition(":")
        self.addr = (host or "127.0.0.1", int(port))
        self.timeout = timeout

    def _command(self, line: bytes) -> bytes:
        with socket.create_connection(self.addr, timeout=self.timeout) as s:
            s.sendall(line)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return reply.strip()

    def set(self, key: bytes, value: bytes, ttl: int, flags: int = 0) -> bytes:
        head = b"set %s %d %d %d\r\n" % (key, flags, ttl, len(value))
        return self._command(head + value + b"\r\n")

    def delete(self, key: bytes) -> bytes:
        return self._command(b"delete %s\r\n" % key)


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.comments = {}  # page path -> list of comments

    def count(self) -> int:
        with self.lock:
            self.requests += 1
            return self.requests


def page(title: str, lines) -> bytes:
    body = "".join(f"<p>{line}</p>\n" for line in lines)
    return (
        f"<!doctype html>\n<title>{html.escape(title)}</title>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}"
    ).encode()


class Handler(BaseHTTPRequestHandler):
    server_version = "rcache-demo-app/1"
    protocol_version = "HTTP/1.1"

    # set by main()
    mc: Memcached = None
    state: State = None
    ttl = 600
    quiet = False

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write("app: %s\n" % (fmt % args))

    def page_path(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if path == "/dynamic" or path.startswith("/dynamic/"):
            path = path[len("/dynamic"):] or "/"
        return path, url.query

    def session(self):
        cookies = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            cookies[name] = value
        return cookies.get("sessionid", "")

    def send(self, status, body: bytes, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path, query = self.page_path()
        if path == "/__stats":
            with self.state.lock:
                n = self.state.requests
            return self.send(200, b"requests=%d\n" % n)
        n = self.state.count()
        session = self.session()
        when = time.strftime("%H:%M:%S")
        lines = [f"rendered by the app: request #{n} at {when}"]
        if path.startswith("/search/"):
            q = urllib.parse.parse_qs(query).get("q", [""])[0]
            lines.append(f"search results for &quot;{html.escape(q)}&quot; (never cached)")
        if session:
            lines.append(f"logged in (session {html.escape(session)}): not cached")
        comments = self.state.comments.get(path, [])
        if comments:
            lines.append(f"{len(comments)} comment(s), latest: {html.escape(comments[-1])}")
        body = page(f"page {path}", lines)

        cacheable = (
            not session
            and not query
            and not path.startswith(NEVER_CACHED)
            and self.command == "GET"
        )
        stored = "no"
        if cacheable:
            key = memcached_key(path)
            if len(key) <= MAX_KEY:
                try:
                    stored = self.mc.set(key, body, self.ttl).decode(errors="replace")
                except OSError as e:
                    stored = f"error: {e}"
                    self.log_message("memcached set %r failed: %s", key, e)
        self.send(200, body, [("X-App-Request", str(n)), ("X-App-Stored", stored)])

    do_HEAD = do_GET

    def do_POST(self):
        path, _ = self.page_path()
        n = self.state.count()
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length).decode(errors="replace") if length else ""
        with self.state.lock:
            self.state.comments.setdefault(path, []).append(data)
        # The page now shows one more comment: drop the cached copy (what the 2009 comments
        # suggest doing "with signals on model save").
        try:
            deleted = self.mc.delete(memcached_key(path)).decode(errors="replace")
        except OSError as e:
            deleted = f"error: {e}"
        body = page(
            f"comment on {path}",
            [
                f"handled by the app: request #{n}",
                f"received POST body: {html.escape(data)}",
                f"cached copy of {html.escape(path)}: {deleted}",
            ],
        )
        self.send(200, body, [("X-App-Request", str(n))])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--memcached", default="127.0.0.1:11211", help="host:port")
    ap.add_argument("--ttl", type=int, default=600, help="expiry of cached pages, seconds")
    ap.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = ap.parse_args()

    Handler.mc = Memcached(args.memcached)
    Handler.state = State()
    Handler.ttl = args.ttl
    Handler.quiet = args.quiet
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"app: listening on {args.host}:{args.port}, memcached {args.memcached}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
