#!/usr/bin/env bash
# Install the Debian 12 packages rcache needs to build, test and demo.
#
#   scripts/install-deps.sh              # build + test + Debian nginx (what test.sh and demo.sh need)
#   scripts/install-deps.sh --bench      # ... plus wrk (load generator)
#   scripts/install-deps.sh --lint       # ... plus shellcheck (CI lints the scripts)
#   scripts/install-deps.sh --proof      # ... plus wrk and valgrind (scripts/chaos, scripts/memcheck)
#   scripts/install-deps.sh --runtime    # only what the demo needs with a prebuilt module
#                                        # (nginx, memcached, python3, curl; used by the Dockerfile)
#   scripts/install-deps.sh --deb        # only what scripts/build-deb.sh needs to build the
#                                        # Debian package (compilers, nginx + nginx-dev, debhelper, lintian)
#   scripts/install-deps.sh --print      # print the package list and exit
#
# Idempotent: when every package is already installed it does not touch apt at all.
# Otherwise it runs `apt-get update` and `apt-get install -y --no-install-recommends`.
#
# Services: Debian's nginx and memcached packages start their daemons on install
# (invoke-rc.d / deb-systemd-invoke). rcache's tests and demo start their own nginx and
# memcached on free ports, so this script keeps the packaged ones from starting: during the
# install a temporary /usr/sbin/policy-rc.d answers 101 ("action forbidden"), which works
# with and without systemd (containers included). On a systemd machine the units that this
# run newly installed are also disabled, so they do not come up at the next boot. If a
# packaged daemon was started anyway by this run, it is stopped. Daemons that were already
# installed before this run are never touched.
#
# Environment: RCACHE_EXTRA_PACKAGES="pkg1 pkg2" adds packages.
set -euo pipefail

# --- the package list --------------------------------------------------------------------
# Building the module (bindgen needs libclang; nginx's configure needs pcre2/zlib/openssl).
build_pkgs=(libclang-dev libpcre2-dev zlib1g-dev libssl-dev pkg-config make gcc)
# Running the tests and the demo.
run_pkgs=(memcached python3 curl ca-certificates)
# Building and testing against Debian's packaged nginx (1.22.1): the binary, and nginx-dev's
# /usr/share/nginx/src + conf_flags used by scripts/build-for-installed-nginx.sh.
debian_nginx_pkgs=(nginx nginx-dev)
# Optional groups.
# The cluster tests write keys with the clients apps use (pylibmc from Debian; pymemcache
# comes from PyPI into target/pyenv, see scripts/python-env.sh).
# tests/metrics.rs checks the Prometheus page with promtool and scrapes it with a real
# Prometheus server (both in Debian's prometheus package).
test_pkgs=(python3-venv python3-pylibmc prometheus)
# Building the Debian package (scripts/build-deb.sh: dpkg-buildpackage, dh_nginx from
# nginx-dev, lintian) and installing it (scripts/test-deb.sh: apt-get install ./the.deb).
deb_pkgs=(build-essential debhelper dpkg-dev lintian git)
bench_pkgs=(wrk valgrind strace python3-matplotlib)
lint_pkgs=(shellcheck)
proof_pkgs=(wrk valgrind)
# Daemons shipped by the packages above that must not be left running / enabled.
service_pkgs=(nginx memcached prometheus)

want=()
profile=full
print_only=0
extra=()
for arg in "$@"; do
    case $arg in
        --bench) extra+=("${bench_pkgs[@]}") ;;
        --lint) extra+=("${lint_pkgs[@]}") ;;
        --proof) extra+=("${proof_pkgs[@]}") ;;
        --runtime) profile=runtime ;;
        --deb) profile=deb ;;
        --print) print_only=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "install-deps.sh: unknown option $arg (try --help)" >&2
            exit 2
            ;;
    esac
done
case $profile in
    full) want=("${build_pkgs[@]}" "${run_pkgs[@]}" "${debian_nginx_pkgs[@]}" "${test_pkgs[@]}" "${deb_pkgs[@]}") ;;
    runtime) want=(nginx "${run_pkgs[@]}") ;;
    deb) want=("${build_pkgs[@]}" "${debian_nginx_pkgs[@]}" "${deb_pkgs[@]}") ;;
esac
want+=("${extra[@]}")
# shellcheck disable=SC2206 # word splitting of the user's list is intended
[ -n "${RCACHE_EXTRA_PACKAGES:-}" ] && want+=(${RCACHE_EXTRA_PACKAGES})

if [ $print_only -eq 1 ]; then
    printf '%s\n' "${want[@]}"
    exit 0
fi

say() { echo "install-deps: $*"; }

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${want[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    say "all ${#want[@]} packages already installed (${want[*]}); skipping apt"
    exit 0
fi
say "missing: ${missing[*]}"

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        say "not root: re-running with sudo"
        exec sudo --preserve-env=RCACHE_EXTRA_PACKAGES "$0" "$@"
    fi
    echo "install-deps: must run as root (or have sudo) to install: ${missing[*]}" >&2
    exit 1
fi

# Which service packages does this run newly install? Only those are stopped/disabled.
new_services=()
for s in "${service_pkgs[@]}"; do
    for m in "${missing[@]}"; do
        [ "$m" = "$s" ] && new_services+=("$s")
    done
done

# --- keep daemons from starting during the install ---------------------------------------
policy=/usr/sbin/policy-rc.d
marker='# rcache install-deps.sh temporary policy'
own_policy=0
cleanup_policy() {
    if [ $own_policy -eq 1 ] && grep -qF "$marker" "$policy" 2>/dev/null; then
        rm -f "$policy"
        say "removed temporary $policy"
    fi
}
trap cleanup_policy EXIT
if [ -e "$policy" ]; then
    say "$policy already exists (left as it is); its answer decides whether daemons start"
else
    printf '#!/bin/sh\n%s: no service starts while packages install\nexit 101\n' "$marker" >"$policy"
    chmod 755 "$policy"
    own_policy=1
    say "installed temporary $policy (exit 101) so packaged daemons do not start"
fi

export DEBIAN_FRONTEND=noninteractive
say "+ apt-get update"
apt-get update
say "+ apt-get install -y --no-install-recommends ${missing[*]}"
apt-get install -y --no-install-recommends "${missing[@]}"

cleanup_policy
own_policy=0

# --- make sure none of the newly installed daemons runs or starts at boot ----------------
have_systemd=0
[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && have_systemd=1
for s in "${new_services[@]}"; do
    if [ $have_systemd -eq 1 ]; then
        say "+ systemctl disable --now $s (newly installed; rcache runs its own)"
        systemctl disable --now "$s" >/dev/null 2>&1 || true
    fi
    # Without systemd (containers), policy-rc.d kept it from starting; double-check by pid file.
    case $s in
        nginx) pidfiles=(/run/nginx.pid) ;;
        memcached) pidfiles=(/run/memcached/memcached.pid /var/run/memcached/memcached.pid) ;;
        *) pidfiles=() ;;
    esac
    for f in "${pidfiles[@]}"; do
        if [ -s "$f" ] && pid=$(cat "$f") && kill -0 "$pid" 2>/dev/null; then
            say "stopping packaged $s (pid $pid) that the install started"
            kill "$pid" || true
        fi
    done
done

still=()
for p in "${missing[@]}"; do
    is_installed "$p" || still+=("$p")
done
if [ ${#still[@]} -ne 0 ]; then
    echo "install-deps: still not installed after apt-get: ${still[*]}" >&2
    exit 1
fi
say "done: ${#missing[@]} package(s) installed"
