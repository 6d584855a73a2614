"""Writes keys to memcached through a real client library, exactly as an application does.

Used by tests/cluster.rs (through tests/common/python.rs) with the Python of
scripts/python-env.sh (target/pyenv: pymemcache from PyPI, Debian's pylibmc).

usage: python3 write_keys.py CLIENT KEYS_FILE SERVER...

CLIENT (how the client is built is the whole point: rcache must place keys alike)
  pymemcache               pymemcache.HashClient(servers, allow_unicode_keys=True,
                           default_noreply=False, serde=pickle_serde): Django's
                           PyMemcacheCache (rendezvous hashing)
  pylibmc-ketama           pylibmc.Client(servers, behaviors={"ketama": True, "hash": "md5"})
  pylibmc-ketama-weighted  pylibmc.Client(servers, behaviors={"ketama_weighted": True}),
                           servers written "host:port:weight"
  pylibmc-modula           pylibmc.Client(servers): libmemcached's defaults
  pylibmc-ketama-default-hash
                           pylibmc.Client(servers, behaviors={"ketama": True}) without
                           "hash": "md5" (django-pylibmc's README example): libmemcached
                           keeps its default key hash, so no rcache_hash matches it
KEYS_FILE  UTF-8 text, one key per line (keys as the app writes them: str).
SERVER     "host:port", or "host:port:weight" for pylibmc-ketama-weighted.

The value of key number i (0-based) is "v:" + key: a str when i is even (both clients
store it UTF-8 encoded with flags 16), bytes when i is odd (flags 0).

Prints one JSON object: {"client", "written", "str", "bytes", "seconds"}. Exits 1 if
any set is not stored.
"""

import json
import sys
import time


def make_client(kind, servers):
    if kind == "pymemcache":
        import pymemcache
        import pymemcache.serde

        # django.core.cache.backends.memcached.PyMemcacheCache's options.
        return pymemcache.HashClient(
            servers,
            allow_unicode_keys=True,
            default_noreply=False,
            serde=pymemcache.serde.pickle_serde,
        )
    import pylibmc

    if kind == "pylibmc-ketama":
        return pylibmc.Client(servers, behaviors={"ketama": True, "hash": "md5"})
    if kind == "pylibmc-ketama-weighted":
        return pylibmc.Client(servers, behaviors={"ketama_weighted": True})
    if kind == "pylibmc-ketama-default-hash":
        return pylibmc.Client(servers, behaviors={"ketama": True})
    if kind == "pylibmc-modula":
        return pylibmc.Client(servers)
    sys.exit(f"write_keys.py: unknown client {kind!r}")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    kind, keys_file, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(keys_file, encoding="utf-8") as f:
        keys = f.read().split("\n")
    if keys and keys[-1] == "":
        keys.pop()
    client = make_client(kind, servers)
    started = time.monotonic()
    counts = {"str": 0, "bytes": 0}
    for i, key in enumerate(keys):
        text = "v:" + key
        value = text if i % 2 == 0 else text.encode("utf-8")
        counts[type(value).__name__] += 1
        if client.set(key, value) is not True:
            sys.exit(f"write_keys.py: {kind}: set {key!r} was not stored")
    print(
        json.dumps(
            {
                "client": kind,
                "written": len(keys),
                "str": counts["str"],
                "bytes": counts["bytes"],
                "seconds": round(time.monotonic() - started, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
