"""The variants: what each one configures, which URL wrk asks, what a correct answer is.

Every variant is one `server {}` on its own port in ONE nginx (same binary, same worker),
so they differ only by their configuration. Placeholders: {mc} memcached's port, {pages}
the directory of page files; `@app` and `upstream app` are common to all.
"""

from dataclasses import dataclass, field

# How nginx reaches the app, for `proxy` and for the rcache fallbacks: HTTP/1.1 with an
# upstream keepalive cache larger than the highest client concurrency, so that requests
# reuse app connections (the app connection is not what is measured).
APP_UPSTREAM = "upstream app { server 127.0.0.1:{app}; keepalive 1024; }"
TO_APP = 'proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";'

# Named http-level blocks that variants ask for (each emitted once).
HTTP_BLOCKS = {
    "mc_ka32": "upstream mc_ka32 { server 127.0.0.1:{mc}; keepalive 32; }",
    "mc_ka256": "upstream mc_ka256 { server 127.0.0.1:{mc}; keepalive 256; }",
    "front_zone": "rcache_front_zone front:64m;",
}

# Directives for the whole http block (bench/run --http-extra), e.g. the metrics zone.
EXTRA_HTTP = []

TINY_BODY = "ok\n"


@dataclass
class Variant:
    name: str
    about: str
    server: str                      # the server block's body (its locations)
    path: str = "/{page}"            # request path; {page} is the page's name
    tiny_body: bool = False          # the answer is TINY_BODY, not the page
    mc_gets: float = 0.0             # memcached gets per request when it works as meant
    mc_hits: float = 0.0             #   ... of which hits
    http: list = field(default_factory=list)  # names in HTTP_BLOCKS
    reps_bonus: int = 0              # extra repetitions (client-bound variants are noisier)
    optional: bool = False           # may be unsupported by this module build: skipped then
    default: bool = True             # part of a run unless --variants says otherwise


VARIANTS = [
    Variant("static", "nginx serves the page from a file (`root`, sendfile on)",
            "location / { root {pages}; }", reps_bonus=2),
    Variant("return200", "`return 200` with a 3-byte body: nginx's floor, not a page",
            'location / { return 200 "ok\\n"; }', tiny_body=True, reps_bonus=2),
    Variant("proxy", "`proxy_pass` to the app directly (upstream keepalive 1024)",
            f"location / {{ {TO_APP} }}"),
    Variant("stock", "`memcached_pass host:port`: a new memcached connection per request",
            "location / { set $memcached_key $uri; memcached_pass 127.0.0.1:{mc}; }",
            mc_gets=1, mc_hits=1),
    Variant("stock_ka32", "`memcached_pass` to `upstream { keepalive 32; }`",
            "location / { set $memcached_key $uri; memcached_pass mc_ka32; }",
            http=["mc_ka32"], mc_gets=1, mc_hits=1),
    Variant("stock_tuned", "`memcached_pass`, `keepalive 256` + `memcached_buffer_size 128k`",
            "location / { set $memcached_key $uri; memcached_pass mc_ka256; "
            "memcached_buffer_size 128k; }",
            http=["mc_ka256"], mc_gets=1, mc_hits=1),
    Variant("rcache_hit", "`rcache_pass host:port` at default settings, key present",
            "location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app; }\n"
            f"        location @app {{ {TO_APP} }}",
            mc_gets=1, mc_hits=1),
    Variant("rcache_miss", "key absent: MISS -> `rcache_fallback @app` -> the app",
            "location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app; }\n"
            f"        location @app {{ {TO_APP} }}",
            path="/miss/{page}", mc_gets=1, mc_hits=0),
    Variant("rcache_bypass", "`rcache_bypass $arg_nocache`, `?nocache=1`: BYPASS -> the app",
            "location / { rcache_pass 127.0.0.1:{mc}; rcache_bypass $arg_nocache; "
            "rcache_fallback @app; }\n"
            f"        location @app {{ {TO_APP} }}",
            path="/{page}?nocache=1"),
    Variant("rcache_front", "front cache: `rcache_front front ttl=10s max_item=2m` (zone "
            "`front:64m`)",
            "location / { rcache_pass 127.0.0.1:{mc}; rcache_front front ttl=10s max_item=2m; "
            "rcache_fallback @app; }\n"
            f"        location @app {{ {TO_APP} }}",
            http=["front_zone"], mc_gets=0, mc_hits=0, reps_bonus=2, optional=True),
    # A page the app never lets be cached: after the first response (NOT_CACHEABLE), the
    # front zone remembers it (the miss memo) and requests go to the app without memcached.
    # rcache_memo's yardstick: the same URL (the app's answer has one header more).
    Variant("proxy_nocache", "`proxy_pass` to the app directly, the `no-store` page",
            f"location / {{ {TO_APP} }}", path="/nocache/{page}"),
    Variant("rcache_memo", "not cacheable (`no-store`): `rcache_store on` + front cache, the "
            "miss memo -> the app",
            "location / { rcache_pass 127.0.0.1:{mc}; rcache_store on; "
            "rcache_front front ttl=10s; rcache_fallback @app; }\n"
            f"        location @app {{ {TO_APP} }}",
            path="/nocache/{page}", http=["front_zone"], mc_gets=0, mc_hits=0, optional=True),
    # The 2009 setup's miss route (tuned), to put rcache_miss in context.
    Variant("stock_miss", "stock MISS: `memcached_pass` (tuned) + `error_page 404 = @app`",
            "location / { set $memcached_key $uri; memcached_pass mc_ka256; "
            "memcached_buffer_size 128k; error_page 404 = @app; }\n"
            f"        location @app {{ {TO_APP} }}",
            path="/miss/{page}", http=["mc_ka256"], mc_gets=1, mc_hits=0),
    # Diagnostic, not in a default run: rcache with a pool as large as stock_tuned's.
    Variant("rcache_hit_ka256", "`rcache_pass` + `rcache_keepalive 256` (not default), key present",
            "location / { rcache_pass 127.0.0.1:{mc}; rcache_keepalive 256; "
            "rcache_fallback @app; }\n"
            f"        location @app {{ {TO_APP} }}",
            mc_gets=1, mc_hits=1, default=False),
    # Not in a default run yet: a fresh HIT looked up with the meta protocol (`mg ... R30`),
    # as every lookup is where stale pages are on; to compare with rcache_hit.
    Variant("rcache_hit_stale", "`rcache_pass` + `rcache_stale 30s`: fresh HIT via `mg`",
            "location / { rcache_pass 127.0.0.1:{mc}; rcache_stale 30s; "
            "rcache_fallback @app; }\n"
            f"        location @app {{ {TO_APP} }}",
            mc_gets=1, mc_hits=1, default=False, optional=True),
]

BY_NAME = {v.name: v for v in VARIANTS}


def fill(template, values):
    """Replace {name} placeholders without touching nginx's own braces."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    return template


def nginx_conf(variants, ports, values, module, master=True, workers=1):
    """The nginx.conf of the nginx under test: one server per variant.

    values: placeholders ({mc}, {app}, {pages}); ports: variant name -> listen port.
    master=False gives the single-process form used under valgrind."""
    blocks = ["    " + extra for extra in EXTRA_HTTP]
    for v in variants:
        for name in v.http:
            if "    " + HTTP_BLOCKS[name] not in blocks:
                blocks.append("    " + HTTP_BLOCKS[name])
    servers = []
    for v in variants:
        servers.append(f"    # {v.name}: {v.about}\n"
                       f"    server {{\n        listen 127.0.0.1:{ports[v.name]};\n"
                       f"        {v.server}\n    }}")
    text = f"""\
# Generated by bench/run: the nginx under test (one server per variant).
load_module {module};
worker_processes {workers};
daemon off;
master_process {"on" if master else "off"};
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{ worker_connections 8192; }}

http {{
    access_log off;
    default_type text/html;
    sendfile on;

    {APP_UPSTREAM}
{chr(10).join(blocks)}

{chr(10).join(servers)}
}}
"""
    return fill(text, values)


def app_conf(port, root):
    """The app: a second, stock nginx (no module) serving the page files. Fast enough that
    it is never the bottleneck, which a Python app would be."""
    return f"""\
# Generated by bench/run: the app behind `proxy`, MISS and BYPASS.
worker_processes 1;
daemon off;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{ worker_connections 8192; }}

http {{
    access_log off;
    default_type text/html;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /nocache/ {{ alias {root}/; add_header Cache-Control no-store; }}
    }}
}}
"""
