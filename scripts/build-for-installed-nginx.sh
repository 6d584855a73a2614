#!/usr/bin/env bash
# Build rcache for an nginx that is already installed (Debian's by default).
#
# A dynamic module must be built against the same nginx version and the same
# `configure` arguments as the nginx that loads it. Debian's `nginx-dev` package
# ships the headers and build scripts of its nginx plus those arguments
# (`conf_flags`); this script configures a private copy of that tree and builds
# the module against it. Nothing outside target/ is written.
#
#   scripts/build-for-installed-nginx.sh            # -> target/debian/release/librcache.so
#
# Environment: NGINX_DEV_SRC (default /usr/share/nginx/src),
#              RCACHE_DEBIAN_TARGET (default target/debian), CARGO_PROFILE (release|dev).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
src=${NGINX_DEV_SRC:-/usr/share/nginx/src}
target_dir=${RCACHE_DEBIAN_TARGET:-$here/target/debian}
profile=${CARGO_PROFILE:-release}

if [ ! -f "$src/configure" ] || [ ! -f "$src/conf_flags" ]; then
    echo "error: $src has no configure/conf_flags; install nginx-dev (apt-get install -y nginx nginx-dev)" >&2
    exit 1
fi

tree=$target_dir/nginx-src
stamp=$tree/.rcache-configured
# Reconfigure when the installed tree changes (an nginx-dev upgrade). dpkg gives files the
# mtime they had in the package, which can be older than the stamp, so compare contents:
# the configure flags and nginx.h (the version).
want_stamp=$(cat "$src/conf_flags" "$src/src/core/nginx.h" | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_stamp" ]; then
    rm -rf "$tree"
    mkdir -p "$target_dir"
    cp -a "$src" "$tree"
    # shellcheck disable=SC1091
    . "$tree/conf_flags"
    (cd "$tree" && ./configure "${NGX_CONF_FLAGS[@]}" \
        --with-cc-opt='-fPIC' --with-ld-opt='-fPIC' >"$tree/configure.log" 2>&1) || {
        tail -20 "$tree/configure.log" >&2
        exit 1
    }
    printf '%s\n' "$want_stamp" >"$stamp"
fi

flag=()
[ "$profile" = release ] && flag=(--release)
NGINX_BUILD_DIR=$tree/objs CARGO_TARGET_DIR=$target_dir cargo build "${flag[@]}" --manifest-path "$here/Cargo.toml"

out_profile=$profile
[ "$profile" = dev ] && out_profile=debug
echo "$target_dir/$out_profile/librcache.so"
