#!/usr/bin/env bash
# rcache demo: nginx + rcache + memcached + a small app, on free local ports, walked through
# with curl. Everything it starts is stopped when it ends (unless --keep).
#
#   scripts/demo.sh               # build, start, walk through, stop
#   scripts/demo.sh --keep        # leave it running afterwards; prints how to stop it
#   scripts/demo.sh --foreground  # walk through, then keep serving in the foreground until
#                                 # Ctrl-C / SIGTERM (the Docker image's default command)
#   scripts/demo.sh --debian      # use Debian's /usr/sbin/nginx and a module built for it
#                                 # (scripts/build-for-installed-nginx.sh) instead of the
#                                 # vendored nginx 1.28
#   scripts/demo.sh --django      # the same walkthrough on the example Django blog
#                                 # (examples/django-blog under gunicorn, in the venv of
#                                 # scripts/django-env.sh, Django and pymemcache from PyPI)
#                                 # with nginx-conf/django-nginx-stores.conf: nginx stores
#                                 # the pages, Django sends PURGE when a comment is saved
#
# Environment:
#   RCACHE_SKIP_DEPS=1        do not run scripts/install-deps.sh first
#   RCACHE_NGINX=PATH         nginx binary to run (no build of the vendored nginx is needed)
#   RCACHE_MODULE=PATH        librcache.so to load (must be built for that nginx; no build)
#   RCACHE_DEMO_PORT=N        nginx's port (default: a free one)
#   RCACHE_DEMO_DIR=DIR       where config, logs and pid files go (default: a new /tmp dir)
#   RCACHE_DEMO_CONF=DIR      take demo.conf and blog.conf from DIR instead of nginx-conf/
#
# The nginx config is nginx-conf/demo.conf + nginx-conf/blog.conf (with --django:
# django-nginx-stores.conf) with their {placeholders} filled in. The exit status is non-zero if any step did not behave as the demo expects.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
mode=once
use_debian=0
use_django=0
for arg in "$@"; do
    case $arg in
        --keep) mode=keep ;;
        --foreground) mode=foreground ;;
        --debian) use_debian=1 ;;
        --django) use_django=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "demo.sh: unknown option $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

say() { printf '%s\n' "$*"; }
die() {
    printf 'demo.sh: %s\n' "$*" >&2
    exit 1
}

# --- 1. packages ---------------------------------------------------------------------------
if [ "${RCACHE_SKIP_DEPS:-0}" != 1 ]; then
    "$here/scripts/install-deps.sh"
fi
for tool in memcached python3 curl; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh)"
done

# --- 2. the module and the nginx that loads it ---------------------------------------------
nginx=${RCACHE_NGINX:-}
module=${RCACHE_MODULE:-}
if [ $use_debian -eq 1 ]; then
    nginx=${nginx:-/usr/sbin/nginx}
    if [ -z "$module" ]; then
        say "== building the module for Debian's nginx (scripts/build-for-installed-nginx.sh)"
        module=$("$here/scripts/build-for-installed-nginx.sh" | tail -n 1)
    fi
elif [ -z "$nginx" ] || [ -z "$module" ]; then
    say "== building the module and the vendored nginx: cargo build --release --features vendored"
    (cd "$here" && cargo build --release --features vendored)
    module=${module:-$here/target/release/librcache.so}
    if [ -z "$nginx" ]; then
        # The nginx binary lives in the nginx-sys build script's OUT_DIR, whose hash changes;
        # ask cargo which one belongs to this build (a no-op build replays the messages).
        out_dir=$(cd "$here" && cargo build --release --features vendored --message-format=json 2>/dev/null |
            python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "build-script-executed" and "nginx-sys" in m.get("package_id", ""):
        print(m["out_dir"])
' | tail -n 1) || true
        if [ -n "$out_dir" ] && [ -x "$out_dir/objs/nginx" ]; then
            nginx=$out_dir/objs/nginx
        else
            # Fallback: the newest vendored nginx under target/release.
            # shellcheck disable=SC2012 # cargo's directory names are plain
            nginx=$(ls -t "$here"/target/release/build/nginx-sys-*/out/objs/nginx 2>/dev/null | head -n 1) || true
        fi
    fi
fi
if [ -z "$nginx" ] || [ ! -x "$nginx" ]; then die "no nginx binary found (${nginx:-none}); set RCACHE_NGINX"; fi
if [ -z "$module" ] || [ ! -f "$module" ]; then die "module not found: ${module:-none}; set RCACHE_MODULE"; fi
case $module in /*) ;; *) module=$PWD/$module ;; esac
say "nginx:  $nginx ($("$nginx" -v 2>&1 | sed 's/.*: //'))"
say "module: $module"

# --- 3. a private directory and free ports -------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=${RCACHE_DEMO_PORT:-$(free_port)}
mc_port=$(free_port)
app_port=$(free_port)
while [ "$mc_port" = "$port" ] || [ "$app_port" = "$port" ] || [ "$app_port" = "$mc_port" ]; do
    mc_port=$(free_port)
    app_port=$(free_port)
done
if [ -n "${RCACHE_DEMO_DIR:-}" ]; then
    dir=$RCACHE_DEMO_DIR
    mkdir -p "$dir"
else
    dir=$(mktemp -d /tmp/rcache-demo.XXXXXX)
fi
dir=$(cd "$dir" && pwd)
chmod 755 "$dir" # nginx's workers run as an unprivileged user when the master is root
mkdir -p "$dir/conf" "$dir/logs" "$dir/temp"

mc_pid=""
app_pid=""
nginx_started=0
tail_pid=""
ok=0
keep_running=0
cleaned=0
nginx_pid() { cat "$dir/logs/nginx.pid" 2>/dev/null || true; }
stop_pid() { # stop_pid PID: TERM, then wait up to 5 s for it to go, then KILL
    local pid=$1 _
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    [ $cleaned -eq 0 ] || return 0
    cleaned=1
    stop_pid "$tail_pid"
    if [ $nginx_started -eq 1 ]; then stop_pid "$(nginx_pid)"; fi
    stop_pid "$app_pid"
    stop_pid "$mc_pid"
    wait 2>/dev/null || true
    if [ $ok -eq 1 ] && [ -z "${RCACHE_DEMO_DIR:-}" ]; then
        rm -rf "$dir"
    else
        say "demo: logs kept in $dir/logs (error.log, access.log, app.log, memcached.log)"
    fi
}
on_exit() {
    [ $keep_running -eq 1 ] || cleanup
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_port() { # wait_port PORT WHAT PID: until something accepts on 127.0.0.1:PORT (5 s)
    local _
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then die "$2 exited; see $dir/logs"; fi
        sleep 0.1
    done
    die "$2 is not listening on 127.0.0.1:$1 after 5 s; see $dir/logs"
}

# --- 4. memcached and the app --------------------------------------------------------------
start_memcached() {
    local user=()
    [ "$(id -u)" -eq 0 ] && user=(-u root) # memcached refuses to run as root without -u
    memcached "${user[@]}" -l 127.0.0.1 -p "$mc_port" -U 0 -m 64 -t 1 >>"$dir/logs/memcached.log" 2>&1 &
    mc_pid=$!
    wait_port "$mc_port" memcached "$mc_pid"
}
say "== starting memcached on 127.0.0.1:$mc_port"
start_memcached
if [ $use_django -eq 0 ]; then
    say "== starting the app (demo/app.py) on 127.0.0.1:$app_port"
    python3 "$here/demo/app.py" --port "$app_port" --memcached "127.0.0.1:$mc_port" >"$dir/logs/app.log" 2>&1 &
    app_pid=$!
    wait_port "$app_port" app "$app_pid"
else
    say "== the Django venv: scripts/django-env.sh"
    django_py=$("$here/scripts/django-env.sh" | tail -n 1)
    django_dir=$here/examples/django-blog
    # Django's settings come from the environment (examples/django-blog/blogsite/settings.py).
    export PYTHONDONTWRITEBYTECODE=1 BLOG_CACHE_MODE=nginx-stores BLOG_DB=$dir/db.sqlite3
    export BLOG_REQUEST_LOG=$dir/logs/django-requests.log RCACHE_PURGE_URL=http://127.0.0.1:$port
    : >"$BLOG_REQUEST_LOG"
    say "== the Django blog: manage.py migrate, manage.py seed_blog (posts, comments, user admin)"
    (cd "$django_dir" && "$django_py" manage.py migrate --noinput -v 0 &&
        "$django_py" manage.py seed_blog --admin-password rcache-demo) >>"$dir/logs/app.log" 2>&1 ||
        die "the Django database could not be set up; see $dir/logs/app.log"
    say "== starting gunicorn (examples/django-blog) on 127.0.0.1:$app_port"
    "$django_py" -m gunicorn --chdir "$django_dir" --bind "127.0.0.1:$app_port" --workers 2 \
        --preload --graceful-timeout 2 --access-logfile - blogsite.wsgi >>"$dir/logs/app.log" 2>&1 &
    app_pid=$!
    wait_port "$app_port" gunicorn "$app_pid"
fi

# --- 5. nginx ------------------------------------------------------------------------------
render() { # render SRC DST: fill in the {placeholders}
    local text
    text=$(<"$1")
    text=${text//'{module}'/$module}
    text=${text//'{port}'/$port}
    text=${text//'{memcached}'/127.0.0.1:$mc_port}
    text=${text//'{app}'/127.0.0.1:$app_port}
    printf '%s\n' "$text" >"$2"
}
conf_src=${RCACHE_DEMO_CONF:-$here/nginx-conf}
render "$conf_src/demo.conf" "$dir/conf/nginx.conf"
if [ $use_django -eq 0 ]; then
    render "$conf_src/blog.conf" "$dir/conf/blog.conf"
else
    render "$conf_src/django-nginx-stores.conf" "$dir/conf/blog.conf" # demo.conf includes blog.conf
fi
nginx_cmd=("$nginx" -p "$dir/" -c "$dir/conf/nginx.conf" -e "$dir/logs/error.log")
say "== starting nginx on port $port: ${nginx_cmd[*]}"
if ! "${nginx_cmd[@]}" -t -q; then
    die "nginx -t rejected $dir/conf/nginx.conf (module loaded from $module)"
fi
"${nginx_cmd[@]}"
nginx_started=1
wait_port "$port" nginx

# --- 6. the walkthrough --------------------------------------------------------------------
base=http://127.0.0.1:$port
failures=0
steps=0
app_requests() {
    if [ $use_django -eq 1 ]; then
        wc -l <"$BLOG_REQUEST_LOG" | tr -d ' '
    else
        curl -sS "http://127.0.0.1:$app_port/__stats" | sed -n 's/^requests=//p'
    fi
}
want_code=200 # the HTTP status step expects
mc_show() { # mc_show KEY: what memcached holds under KEY (first line)
    python3 - "$mc_port" "$1" <<'EOF'
import socket, sys
port, key = int(sys.argv[1]), sys.argv[2]
try:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"get %s\r\n" % key.encode())
        data = b""
        while not (data.endswith(b"END\r\n")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n", 1)[0].decode(errors="replace")
    print(head if head.startswith("VALUE") else "(no such key)")
except OSError as e:
    print(f"(memcached unreachable: {e})")
EOF
}
shell_words() { # the arguments, quoted for copying into a shell where needed
    local a out=()
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
    done
    printf '%s' "${out[*]}"
}
# step EXPECTED_STATUS APP_DELTA "what it shows" CURL_ARGS...
#   EXPECTED_STATUS: the X-Rcache-Status the response must carry ("-": none at all)
#   APP_DELTA: how many requests the app must have served meanwhile
step() {
    local want=$1 want_delta=$2 title=$3 before after code status delta verdict
    shift 3
    steps=$((steps + 1))
    say ""
    say "-- $steps. $title"
    say "\$ curl -i $(shell_words "$@")"
    rm -f "$dir/hdr" "$dir/body"
    touch "$dir/hdr" "$dir/body"
    before=$(app_requests)
    code=$(curl -sS -D "$dir/hdr" -o "$dir/body" -w '%{http_code}' "$@") || code="curl failed"
    after=$(app_requests)
    status=$(tr -d '\r' <"$dir/hdr" | sed -n 's/^[Xx]-[Rr]cache-[Ss]tatus: *//p' | tail -n 1)
    delta=$((${after:-0} - ${before:-0}))
    say "   HTTP $code   X-Rcache-Status: ${status:-(none: rcache not involved)}"
    sed -n 's/.*<p>\(.*\)<\/p>.*/\1/p' "$dir/body" | sed 's/&quot;/"/g; s/^/   | /'
    say "   app requests: $before -> $after"
    if [ "$code" = "$want_code" ] && [ "${status:--}" = "$want" ] && [ "$delta" = "$want_delta" ]; then
        verdict="ok"
    else
        verdict="UNEXPECTED: wanted HTTP $want_code, X-Rcache-Status ${want/#-/(none)}, app +$want_delta"
        failures=$((failures + 1))
    fi
    say "   => $verdict"
}

say ""
say "== walkthrough: nginx on $base, memcached 127.0.0.1:$mc_port, app 127.0.0.1:$app_port"
if [ $use_django -eq 1 ]; then
    say "   (the app is the Django blog; its requests are counted in $BLOG_REQUEST_LOG)"
    post=$base/posts/keep-alive-to-memcached/
    jar=$dir/cookies.txt
    step MISS 1 "First visit: the post is not in memcached -> MISS; Django renders it with Cache-Control: s-maxage=300 and nginx stores it (rcache_store)" \
        "$post"
    say "   memcached now holds: $(mc_show /posts/keep-alive-to-memcached/)"
    step HIT 0 "Second visit: nginx serves the page straight from memcached -> HIT; Django is not asked" "$post"
    say ""
    say "== logging in to the admin (user admin, password rcache-demo) with curl's cookie jar"
    token=$(curl -sS -c "$jar" "$base/admin/login/" | sed -n 's/.*name="csrfmiddlewaretoken" value="\([^"]*\)".*/\1/p' | head -n 1)
    code=$(curl -sS -b "$jar" -c "$jar" -o /dev/null -w '%{http_code}' --data-urlencode "csrfmiddlewaretoken=$token" \
        --data-urlencode username=admin --data-urlencode password=rcache-demo --data-urlencode next=/admin/ \
        "$base/admin/login/")
    grep -q sessionid "$jar" || die "admin login failed (HTTP $code)"
    say "   HTTP $code, sessionid cookie set"
    step BYPASS 1 "Logged in (sessionid cookie): memcached is not asked -> BYPASS; Django renders the page" \
        -b "$jar" "$post"
    rm -f "$jar"
    step MISS 1 "The comment form sets the CSRF cookie: Django's answer is not stored (Set-Cookie, never_cache)" \
        -c "$jar" "${post}comment/"
    token=$(sed -n 's/.*name="csrfmiddlewaretoken" value="\([^"]*\)".*/\1/p' "$dir/body" | head -n 1)
    want_code=302
    step BYPASS 1 "A comment POSTed to the cached post URL -> BYPASS; Django saves it and its post_save signal sends PURGE for the post and the front page (soft purge)" \
        -b "$jar" --data-urlencode "csrfmiddlewaretoken=$token" --data-urlencode "name=Demo" \
        --data-urlencode "body=Hello from demo.sh" "$post"
    want_code=200
    step EXPIRED 1 "The next anonymous visit: the purged page is rendered again by one request (EXPIRED), with the comment" "$post"
    grep -q "Hello from demo.sh" "$dir/body" || {
        say "   UNEXPECTED: the comment is not on the page"
        failures=$((failures + 1))
    }
    step HIT 0 "... and then a HIT again" "$post"
    step - 1 "/search/ is always dynamic: a plain proxy_pass location, rcache not involved" \
        "$base/search/?q=memcached"
    step - 1 "... every time" "$base/search/?q=memcached"
else
say "   (the app's request counter is read from the app directly, not through nginx)"

step MISS 1 "First visit: /about/ is not in memcached -> MISS; nginx hands the request to the app, which renders the page and stores it under the key /about/" \
    "$base/about/"
say "   memcached now holds: $(mc_show /about/)"

step HIT 0 "Second visit: nginx serves the page straight from memcached -> HIT; the app is not asked (same 'request #' in the page)" \
    "$base/about/"

step BYPASS 1 "A logged-in visitor (session cookie): memcached is not asked -> BYPASS; the app renders a personal page" \
    -H 'Cookie: sessionid=abc' "$base/about/"

step - 1 "/search/ is always dynamic: a plain proxy_pass location, rcache not involved" \
    "$base/search/?q=nginx"

step BYPASS 1 "A POST is never answered from the cache -> BYPASS; the app gets the body (and drops the cached /about/)" \
    --data 'comment=nice post' "$base/about/"

step MISS 1 "The app dropped the cached copy: the next visit is a MISS, rendered again with the comment" \
    "$base/about/"

step HIT 0 "... and then a HIT again" "$base/about/"

say ""
say "== stopping memcached (pid $mc_pid)"
stop_pid "$mc_pid"
wait "$mc_pid" 2>/dev/null || true
mc_pid=""
step ERROR 1 "memcached is down: rcache answers ERROR and hands the request to the app -- the visitor still gets the page, no 5xx" \
    "$base/about/"
down_at=$(date +%s)

say ""
say "== starting memcached again (empty) on 127.0.0.1:$mc_port"
start_memcached
step ERROR 1 "memcached is back (empty), but rcache marked it down for fail_timeout (10 s for rcache_pass host:port): still ERROR, without even a connect attempt (one error log line per outage, not one per request); the app renders the page and stores it in memcached again" \
    "$base/about/"
wait_s=$((down_at + 11 - $(date +%s)))
if [ "$wait_s" -gt 0 ]; then
    say "   (waiting ${wait_s}s for fail_timeout to pass: then one request tries memcached again)"
    sleep "$wait_s"
fi
step HIT 0 "fail_timeout has passed: rcache asks memcached again and finds the page the app stored -> HIT (and logs once that memcached answers again)" "$base/about/"
fi

say ""
say "== nginx's access log (\$rcache_status is kept through the internal redirect):"
sed 's/^/   /' "$dir/logs/access.log"
say ""
if [ $failures -eq 0 ]; then
    ok=1
    say "demo: all $steps steps behaved as expected"
else
    say "demo: $failures of $steps steps did NOT behave as expected"
    say "      nginx error log ($dir/logs/error.log), last lines:"
    tail -n 15 "$dir/logs/error.log" | sed 's/^/   /'
fi
say "demo: $((steps - failures)) passed, $failures failed"

# --- 7. what next --------------------------------------------------------------------------
case $mode in
    keep)
        cat >"$dir/stop.sh" <<EOF
#!/bin/sh
# Stops what scripts/demo.sh --keep left running.
kill \$(cat "$dir/logs/nginx.pid") $app_pid $mc_pid 2>/dev/null
sleep 1
rm -rf "$dir"
EOF
        chmod +x "$dir/stop.sh"
        keep_running=1 # nginx runs from $dir: leave it and everything else as it is
        say ""
        say "Left running: nginx $base (pid $(nginx_pid)), app pid $app_pid, memcached pid $mc_pid"
        say "Try:   curl -i $base/about/"
        say "Logs:  $dir/logs/"
        say "Stop:  sh $dir/stop.sh"
        ;;
    foreground)
        say ""
        say "Serving on port $port (nginx $base) until interrupted; access log follows."
        tail -n 0 -F "$dir/logs/access.log" &
        tail_pid=$!
        # `wait` returns when a signal arrives, so the traps run at once.
        wait "$tail_pid" || true
        ;;
esac
[ $failures -eq 0 ]
