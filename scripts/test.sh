#!/usr/bin/env bash
# rcache's full test suite: the one command to run before pushing.
#
#   scripts/test.sh                  # everything below
#   scripts/test.sh --vendored-only  # skip the Debian-nginx stages
#   scripts/test.sh --debian-only    # only the Debian-nginx stages
#   scripts/test.sh [...] -- ARGS    # ARGS go to every `cargo test`, e.g.
#                                    #   scripts/test.sh -- hit_ -- --nocapture
#
# Stages:
#   deps           scripts/install-deps.sh (skipped when RCACHE_SKIP_DEPS=1)
#   pyenv          scripts/python-env.sh: target/pyenv with pymemcache (PyPI) and pylibmc
#                  (Debian), the clients the cluster tests write keys with
#   django-env     scripts/django-env.sh: target/django-env with Django 4.2, pymemcache and
#                  gunicorn (PyPI); tests/django_blog.rs runs examples/django-blog/ on it
#                  behind nginx + rcache, in the vendored and deb stages like every
#                  integration test
#   build          cargo build --release --features vendored
#                  the module as shipped (panic=abort, LTO) -> target/release/librcache.so.
#                  `cargo test` alone does not refresh that file: it builds the library
#                  with the test profile (panic=unwind) into target/release/deps/ only.
#                  The integration tests are pointed at this file (RCACHE_MODULE), so
#                  what is tested is what ships (the demo loads it too).
#                  Cost: a second vendored nginx build (~40 s cold): cargo gives this
#                  build its own nginx-sys build-script run (observed: its own
#                  target/release/build/nginx-sys-* directory; presumably the panic
#                  setting), while clippy and `cargo test` share one.
#   vendored       cargo test --release --features vendored
#                  unit tests + integration tests against the nginx 1.28 that the nginx-src
#                  crate bundles; the tests find that binary themselves and load
#                  target/release/librcache.so (see tests/common)
#   debug          the bundled nginx and the module again, built --with-debug (in
#                  target/debug-nginx, ~2 min cold), and tests/debug_log.rs run with
#                  --ignored against them: the module's debug log tells a request's story
#   deb-build      scripts/build-deb.sh -> target/deb/libnginx-mod-http-rcache_<version>_amd64.deb
#                  the Debian package, built as Debian builds its nginx modules (dh_nginx,
#                  against nginx-dev's 1.22 tree and configure flags), then lintian
#   deb            scripts/test-deb.sh <that .deb>: `apt-get install ./<deb>`; `nginx -t`
#                  with Debian's stock /etc/nginx/nginx.conf loads it (modules-enabled);
#                    RCACHE_NGINX=/usr/sbin/nginx \
#                    RCACHE_MODULE=/usr/lib/nginx/modules/ngx_http_rcache_module.so \
#                    cargo test --release --features vendored --no-fail-fast --test '*'
#                  the integration tests again, on Debian's nginx with the installed module
#                  (the test binaries are the same, built with `vendored`; only the nginx
#                  binary and the module they load differ); then `apt-get purge` and
#                  `nginx -t` again. The packaged nginx daemon is kept from starting. Needs
#                  root (apt-get), as the deps stage does.
#
# A failing test stage does not stop the later ones (you see everything that is broken);
# a failing deps or deb-build stage skips what depends on it. A summary at the end
# names each stage's result; the exit status is non-zero if any stage failed.
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1

run_vendored=1
run_debian=1
cargo_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --vendored-only) run_debian=0 ;;
        --debian-only) run_vendored=0 ;;
        --)
            shift
            cargo_args=("$@")
            break
            ;;
        -h | --help)
            sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "test.sh: unknown option $1 (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done
if [ $run_vendored -eq 0 ] && [ $run_debian -eq 0 ]; then
    echo "test.sh: --vendored-only and --debian-only exclude each other" >&2
    exit 2
fi

names=()
results=()
failed=0
record() { # record NAME RESULT
    names+=("$1")
    results+=("$2")
    case $2 in FAIL*) failed=1 ;; esac
}
banner() { printf '\n==== test.sh: %s ====\n' "$*"; }
stage() { # stage NAME CMD... : run CMD with its output visible, record its result
    local name=$1 t0 rc
    shift
    banner "$name: $*"
    t0=$SECONDS
    "$@"
    rc=$?
    if [ $rc -eq 0 ]; then
        record "$name" "ok ($((SECONDS - t0))s)"
    else
        record "$name" "FAIL (exit $rc, $((SECONDS - t0))s)"
    fi
    return $rc
}
summary() {
    local i
    banner "summary"
    for i in "${!names[@]}"; do
        printf '  %-13s %s\n' "${names[$i]}" "${results[$i]}"
    done
    if [ $failed -eq 0 ]; then
        echo "test.sh: all stages passed"
    else
        echo "test.sh: FAILED (see the stages marked FAIL above)"
    fi
}

# --- deps ----------------------------------------------------------------------------------
if [ "${RCACHE_SKIP_DEPS:-0}" = 1 ]; then
    record deps "skipped (RCACHE_SKIP_DEPS=1)"
elif ! stage deps "$here/scripts/install-deps.sh"; then
    summary
    exit 1
fi

# --- Python clients for the cluster tests (target/pyenv) ----------------------------------
if ! stage pyenv "$here/scripts/python-env.sh"; then
    summary
    exit 1
fi

# --- Django, gunicorn and pymemcache for the Django blog's tests (target/django-env) --------
if ! stage django-env "$here/scripts/django-env.sh"; then
    summary
    exit 1
fi

# --- vendored nginx 1.28 -------------------------------------------------------------------
if [ $run_vendored -eq 1 ]; then
    if stage build cargo build --release --features vendored; then
        # The integration tests load the module as shipped (not the test-profile copy).
        RCACHE_MODULE=${RCACHE_MODULE:-$here/target/release/librcache.so} \
            stage vendored cargo test --release --features vendored --no-fail-fast "${cargo_args[@]}"
    else
        record vendored "skipped (build failed)"
    fi
    # nginx's debug log exists only in a --with-debug build, and the module's debug lines
    # are compiled in only against one: a separate target dir keeps both apart.
    debug_env=(env NGX_CONFIGURE_ARGS=--with-debug CARGO_TARGET_DIR="$here/target/debug-nginx")
    if stage debug-build "${debug_env[@]}" cargo build --release --features vendored; then
        RCACHE_MODULE=$here/target/debug-nginx/release/librcache.so \
            stage debug "${debug_env[@]}" cargo test --release --features vendored \
            --test debug_log -- --ignored
    else
        record debug "skipped (debug-build failed)"
    fi
else
    record build "skipped (--debian-only)"
    record vendored "skipped (--debian-only)"
    record debug "skipped (--debian-only)"
fi

# --- Debian's nginx, with the module as a Debian package -----------------------------------
if [ $run_debian -eq 1 ]; then
    deb=""
    banner "deb-build: scripts/build-deb.sh"
    t0=$SECONDS
    # The script prints the .deb's path as its last line of stdout; its progress, cargo's
    # and lintian's output go to stderr and stay visible.
    if out=$("$here/scripts/build-deb.sh"); then
        deb=$(printf '%s\n' "$out" | tail -n 1)
    fi
    if [ -n "$deb" ] && [ -f "$deb" ]; then
        record deb-build "ok ($((SECONDS - t0))s): $deb"
    else
        record deb-build "FAIL ($((SECONDS - t0))s; no package built)"
    fi
    if [ -z "$deb" ] || [ ! -f "$deb" ]; then
        record deb "skipped (deb-build failed)"
    else
        stage deb "$here/scripts/test-deb.sh" "$deb" -- "${cargo_args[@]}"
    fi
else
    record deb-build "skipped (--vendored-only)"
    record deb "skipped (--vendored-only)"
fi

summary
exit $failed
