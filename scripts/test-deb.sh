#!/usr/bin/env bash
# Test the Debian package built by scripts/build-deb.sh on this machine (as root): install,
# load into Debian's nginx with its stock configuration, the integration suite, purge.
#
#   scripts/test-deb.sh                  # the .deb in target/deb/
#   scripts/test-deb.sh PATH.deb         # another one
#   scripts/test-deb.sh [...] -- ARGS    # ARGS go to `cargo test`, e.g. -- hit_ -- --nocapture
#
# Steps (the first failure of install/load/purge stops the script; a failing suite does not
# skip the purge checks; exit status non-zero if anything failed):
#   install  a copy of the package already installed is purged first; then
#            `apt-get install -y ./<deb>`, with the packaged nginx daemon kept from starting
#            (a temporary /usr/sbin/policy-rc.d answering 101 if there is none, as
#            scripts/install-deps.sh does; the package's nginx-reload trigger only reloads an
#            nginx that runs). Checks the files dh_nginx installs: the module in
#            /usr/lib/nginx/modules/, mod-http-rcache.conf in modules-available and its
#            symlink 50-mod-http-rcache.conf in /etc/nginx/modules-enabled/.
#   load     `nginx -t` with Debian's /etc/nginx/nginx.conf; `nginx -T` shows the
#            load_module line from modules-enabled; a small config that includes
#            modules-enabled and uses rcache_pass passes `nginx -t` (the directives come
#            from the installed module); the README's line that enables the blog config
#            (filled from the packaged example) passes `nginx -t` with Debian's default site.
#   suite    RCACHE_NGINX=/usr/sbin/nginx RCACHE_MODULE=<installed module> \
#              cargo test --release --features vendored --no-fail-fast --test '*' ARGS
#            (scripts/test.sh's deb stage, with the packaged module). Needs target/pyenv
#            and target/django-env (scripts/python-env.sh and scripts/django-env.sh, run
#            here; no-ops when they exist).
#   purge    `apt-get purge -y libnginx-mod-http-rcache`; `nginx -t` passes; the module,
#            the .conf and the modules-enabled symlink are gone.
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1

pkg=libnginx-mod-http-rcache
module=/usr/lib/nginx/modules/ngx_http_rcache_module.so
conf_avail=/usr/share/nginx/modules-available/mod-http-rcache.conf
conf_link=/etc/nginx/modules-enabled/50-mod-http-rcache.conf
load_line='load_module modules/ngx_http_rcache_module.so;'
nginx=/usr/sbin/nginx

deb=""
cargo_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --)
            shift
            cargo_args=("$@")
            break
            ;;
        -h | --help)
            sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *.deb) deb=$1 ;;
        *)
            echo "test-deb.sh: unknown argument $1 (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done

t_start=$SECONDS
say() { echo "test-deb: $*"; }
fail() {
    echo "test-deb: FAIL: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "must run as root (apt-get install/purge)"
if [ -z "$deb" ]; then
    arch=$(dpkg --print-architecture)
    mapfile -t debs < <(ls -t "$here"/target/deb/${pkg}_*_"$arch".deb 2>/dev/null)
    [ ${#debs[@]} -gt 0 ] || fail "no target/deb/${pkg}_*_$arch.deb: run scripts/build-deb.sh first"
    deb=${debs[0]}
    [ ${#debs[@]} -eq 1 ] || say "several packages in target/deb/, using the newest: $deb"
fi
[ -f "$deb" ] || fail "$deb does not exist"
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
[ -x "$nginx" ] || fail "$nginx missing (scripts/install-deps.sh installs Debian's nginx)"
export DEBIAN_FRONTEND=noninteractive

status() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true; }
is_installed() { [ "$(status "$1")" = installed ]; }
is_known() { # installed, or half-installed, or config files left: anything but purged
    local s
    s=$(status "$1")
    [ -n "$s" ] && [ "$s" != not-installed ]
}
nginx_pid() { # the pid of a running packaged nginx (its pid file), or nothing
    local pid
    [ -s /run/nginx.pid ] && pid=$(cat /run/nginx.pid) && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# --- keep the packaged nginx from starting / reloading -------------------------------------
policy=/usr/sbin/policy-rc.d
marker='# rcache test-deb.sh temporary policy'
installed_by_us=0
test_site=/etc/nginx/sites-enabled/rcache-test-deb-blog.conf
cleanup() {
    if [ $installed_by_us -eq 1 ]; then
        say "cleanup: purging $pkg (the script stopped before its purge step)"
        apt-get purge -y -q "$pkg" >/dev/null 2>&1 || true
    fi
    if grep -qF "$marker" "$policy" 2>/dev/null; then rm -f "$policy"; fi
    rm -f "$test_site"
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n%s: no service starts while packages install\nexit 101\n' "$marker" >"$policy"
    chmod 755 "$policy"
    say "installed a temporary $policy (exit 101): the packaged nginx stays stopped"
fi
pid_before=$(nginx_pid || true)

if ! cmp -s <(md5sum </etc/nginx/nginx.conf | cut -d' ' -f1) \
    <(dpkg-query -W -f='${Conffiles}\n' nginx-common | awk '$1 == "/etc/nginx/nginx.conf" {print $2}'); then
    say "note: /etc/nginx/nginx.conf differs from the one nginx-common shipped"
fi

# --- install ---------------------------------------------------------------------------------
t0=$SECONDS
if is_known "$pkg"; then
    say "purging the $pkg that is already installed"
    apt-get purge -y -q "$pkg" || fail "apt-get purge of the previously installed $pkg"
fi
say "+ apt-get install -y $deb"
installed_by_us=1
apt-get install -y "$deb" || fail "apt-get install $deb"
is_installed "$pkg" || fail "$pkg not installed after apt-get install"
say "installed: $(dpkg-query -W -f='${Package} ${Version}, Depends: ${Depends}' "$pkg")"
[ -f "$module" ] || fail "$module missing after install"
[ -f "$conf_avail" ] || fail "$conf_avail missing after install"
grep -qxF "$load_line" "$conf_avail" || fail "$conf_avail does not say: $load_line"
[ -L "$conf_link" ] || fail "$conf_link (the modules-enabled symlink) missing after install"
[ "$(readlink -f "$conf_link")" = "$conf_avail" ] || fail "$conf_link does not point to $conf_avail"
pid_after=$(nginx_pid || true)
if [ -n "$pid_after" ] && [ "$pid_after" != "$pid_before" ]; then
    say "stopping the packaged nginx (pid $pid_after) that the install started"
    kill "$pid_after" || true
fi
say "install: ok ($((SECONDS - t0))s): $module, $conf_link -> $conf_avail"

# --- load ------------------------------------------------------------------------------------
"$nginx" -t || fail "nginx -t with /etc/nginx/nginx.conf and the module installed"
dump=$("$nginx" -T 2>/dev/null) || fail "nginx -T"
printf '%s\n' "$dump" | grep -A1 -xF "# configuration file $conf_link:" | grep -qxF "$load_line" ||
    fail "nginx -T does not show '$load_line' from $conf_link"
tmp=$(mktemp -d /tmp/rcache-test-deb.XXXXXX)
cat >"$tmp/nginx.conf" <<EOF
include /etc/nginx/modules-enabled/*.conf;
pid $tmp/nginx.pid;
error_log stderr;
events {}
http {
    server {
        listen 127.0.0.1:8089;
        location / { rcache_pass 127.0.0.1:11211; rcache_fallback @app; }
        location @app { return 200; }
    }
}
EOF
"$nginx" -t -q -c "$tmp/nginx.conf" || fail "nginx -t: a config using rcache_pass with modules-enabled included"
rm -rf "$tmp"
# The README's third line (enable the blog config), as a user types it, but into a file
# of its own that cleanup removes: the example must pass `nginx -t` next to Debian's
# default site.
readme_line=$(grep -m1 "^sed 's/{port}/" "$here/README.md") ||
    fail "README.md has no line enabling blog.conf (sed 's/{port}/...')"
site_target=/etc/nginx/sites-enabled/blog.conf
case $readme_line in *"> $site_target && nginx -t"*) ;; *) fail "README's blog.conf line does not write $site_target: $readme_line" ;; esac
cmd=${readme_line%% && nginx -t*}
eval "${cmd/"> $site_target"/"> $test_site"}" || fail "the README's line: $cmd"
if grep -qE '\{(port|memcached|app)\}' "$test_site"; then fail "placeholders left in $test_site"; fi
"$nginx" -t || fail "nginx -t with the blog config enabled as the README says ($test_site)"
rm -f "$test_site"
say "load: ok: nginx -t passes; nginx -T shows '$load_line' ($conf_link); rcache_pass is known; the README's blog.conf line passes nginx -t"

# --- suite -----------------------------------------------------------------------------------
suite=ok
passed=0
failed_n=0
if [ -z "${RCACHE_PYTHON:-}" ]; then
    "$here/scripts/python-env.sh" >/dev/null || fail "scripts/python-env.sh (target/pyenv)"
fi
"$here/scripts/django-env.sh" >/dev/null || fail "scripts/django-env.sh (target/django-env)"
t0=$SECONDS
log=$(mktemp /tmp/rcache-test-deb-suite.XXXXXX)
say "+ RCACHE_NGINX=$nginx RCACHE_MODULE=$module cargo test --release --features vendored --no-fail-fast --test '*' ${cargo_args[*]}"
RCACHE_NGINX=$nginx RCACHE_MODULE=$module \
    cargo test --release --features vendored --no-fail-fast --test '*' "${cargo_args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
while read -r p f; do
    passed=$((passed + p))
    failed_n=$((failed_n + f))
done < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$log")
rm -f "$log"
if [ "$rc" -ne 0 ]; then
    suite="FAIL (cargo test exit $rc: $passed passed, $failed_n failed)"
else
    suite="ok ($passed passed, $((SECONDS - t0))s)"
fi
say "suite: $suite"

# --- purge -----------------------------------------------------------------------------------
say "+ apt-get purge -y $pkg"
apt-get purge -y "$pkg" || fail "apt-get purge $pkg"
installed_by_us=0
is_known "$pkg" && fail "$pkg still known to dpkg after purge (status $(status "$pkg"))"
"$nginx" -t || fail "nginx -t after the purge"
for f in "$module" "$conf_avail" "$conf_link" "$conf_link.removed"; do
    if [ -e "$f" ] || [ -L "$f" ]; then fail "$f still there after the purge"; fi
done
say "purge: ok: nginx -t passes; $module, $conf_avail and $conf_link are gone"

if [ "$suite" != "${suite#FAIL}" ]; then
    fail "install, load and purge ok, but the suite failed: $suite ($((SECONDS - t_start))s)"
fi
say "all ok ($((SECONDS - t_start))s): install, load, suite $suite, purge"
