"""The servers under test: memcached, the app (a second, stock nginx) and the nginx with the
module; plus the small clients the harness itself uses (memcached text protocol, HTTP/1.1).

Placement (bench/README.md, "Method, and why"): everything on the server side --
nginx, memcached and the app -- is pinned to one core, the load generator to another.
"""

import os
import socket
import subprocess

from .machine import children
from .procs import free_port, wait_for_port


class Memcached:
    """A private memcached on 127.0.0.1, with a persistent connection for `set` and `stats`
    (persistent, so reading total_connections does not itself add one)."""

    def __init__(self, procs, workdir, cpus):
        self.port = free_port()
        argv = ["memcached", "-l", "127.0.0.1", "-p", str(self.port), "-U", "0",
                "-m", "256", "-c", "8192", "-I", "2m"]  # 1 MiB pages
        if os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root without it
        self.proc = procs.start("memcached", argv, cpus=cpus,
                                log=os.path.join(workdir, "logs", "memcached.log"))
        wait_for_port(self.port, self.proc)
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("memcached closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def set(self, key, value, flags=0):
        self.sock.sendall(b"set %s %d 0 %d\r\n%s\r\n" % (key.encode(), flags, len(value), value))
        reply = self._line()
        if reply != b"STORED":
            raise RuntimeError(f"memcached set {key}: {reply!r}")

    def delete(self, key):
        self.sock.sendall(b"delete %s\r\n" % key.encode())
        self._line()  # DELETED or NOT_FOUND

    def stats(self):
        self.sock.sendall(b"stats\r\n")
        stats = {}
        while True:
            line = self._line().decode()
            if line == "END":
                return stats
            _, name, value = line.split(" ", 2)
            stats[name] = int(value) if value.isdigit() else value

    def pids(self):
        return [self.proc.pid]


class Nginx:
    """An nginx started in the foreground (`daemon off`), master + `worker_processes 1`,
    or under valgrind with `master_process off` (one process is then the worker)."""

    def __init__(self, procs, binary, prefix, conf_text, name, cpus, ports, wrapper=()):
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        self.prefix = prefix
        self.conf = os.path.join(prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf_text)
        self.procs = procs
        self.proc = procs.start(name, list(wrapper) + [binary, "-p", prefix, "-c", self.conf],
                                cpus=cpus, log=os.path.join(prefix, "logs", "stderr.log"))
        for port in ports:
            wait_for_port(port, self.proc, timeout=60 if wrapper else 15)

    def worker_pid(self):
        """The single worker (or the process itself when master_process is off)."""
        kids = children(self.proc.pid)
        return kids[0] if kids else self.proc.pid

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def error_log(self):
        path = os.path.join(self.prefix, "logs", "error.log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    def stop(self):
        self.procs.stop(self.proc)


def nginx_test(binary, prefix, conf_text):
    """`nginx -t` on conf_text: (ok, output)."""
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx-test.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    out = subprocess.run([binary, "-t", "-p", prefix, "-c", conf],
                         capture_output=True, text=True, timeout=30)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client: enough to validate responses byte for byte and
    to drive one-client cost measurements (callgrind, strace). Sends what wrk sends."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("server closed the connection")
        self.buf += chunk

    def get(self, path):
        """(status, headers dict with lower-case names, body, raw response size in bytes)."""
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path.encode(), self.port))
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise RuntimeError(f"GET {path}: no Content-Length ({lines[0]})")
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body, len(head) + 4 + length

    def close(self):
        self.sock.close()
