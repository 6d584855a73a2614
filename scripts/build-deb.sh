#!/usr/bin/env bash
# Build the Debian package of rcache for the installed Debian nginx (Debian 12: 1.22.1).
#
#   scripts/build-deb.sh     # -> target/deb/libnginx-mod-http-rcache_<version>_<arch>.deb
#                            #    (+ the -dbgsym package), then lintian on it
#
# The package is built as Debian builds its nginx modules (debian/rules: dh-sequence-nginx
# from nginx-dev, the module built against nginx-dev's tree and conf_flags, dh_nginx for
# mod-http-rcache.conf, the modules-enabled symlink and the nginx-abi-* dependency).
#
# Steps:
#   1. scripts/install-deps.sh --deb: installs what the build needs (nginx, nginx-dev,
#      debhelper, dpkg-dev, lintian, libclang-dev, ...) when something is missing; nothing
#      is touched when all is there; a newly installed nginx daemon is kept from starting.
#   2. Checks: debian/changelog's upstream version equals Cargo.toml's; a cargo/rustc at
#      least as new as Cargo.toml's rust-version is on PATH (rustup).
#   3. Copies the source (git's tracked and untracked, not ignored files) to
#      target/deb/build/ and runs `dpkg-buildpackage -us -uc -b` there, so neither the
#      .deb/.changes (dpkg-buildpackage writes them to ..) nor debian/'s build artefacts
#      land in the checkout. Cargo's target directory, target/deb/cargo, survives between
#      runs: a rerun rebuilds only what changed.
#      `-d`: debian/control asks for rustc (>= 1.85), which Debian 12 cannot satisfy (its
#      rustc is 1.63); the Rust toolchain is rustup's. The script runs dpkg-checkbuilddeps
#      itself and adds -d only when rustc/cargo are the only unmet build dependencies.
#   4. Copies the .deb files to target/deb/ and runs lintian on the package (exit status
#      non-zero on a lintian error; warnings and infos are printed).
#
# Output: the path of the .deb as the last line of stdout. Build log: target/deb/build.log.
# Environment: DEB_BUILD_OPTIONS is passed through (e.g. nocheck skips the nginx -t load
# test of the module during the build).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
t_start=$SECONDS
say() { echo "build-deb: $*" >&2; }
die() {
    echo "build-deb: error: $*" >&2
    exit 1
}

pkg=libnginx-mod-http-rcache
out=$here/target/deb
cargo_target=$out/cargo

# --- 1. build dependencies ------------------------------------------------------------------
# scripts/install-deps.sh --deb: apt only for what is missing, the packaged nginx kept from
# starting. Its output goes to stderr: stdout's last line is the .deb's path.
say "[1/4] build dependencies: scripts/install-deps.sh --deb"
"$here/scripts/install-deps.sh" --deb >&2 || die "scripts/install-deps.sh --deb failed"

# --- 2. versions and toolchain ---------------------------------------------------------------
toml_field() { sed -n "s/^$1 *= *\"\\(.*\\)\"/\\1/p" Cargo.toml | head -n 1; }
crate_version=$(toml_field version)
rust_min=$(toml_field rust-version)
deb_version=$(dpkg-parsechangelog -S Version)
[ "${deb_version%-*}" = "$crate_version" ] ||
    die "debian/changelog is at $deb_version but Cargo.toml at $crate_version: add a changelog entry ($crate_version-1)"
command -v cargo >/dev/null || die "cargo not on PATH (install Rust >= $rust_min with rustup)"
rustc_version=$(rustc --version | awk '{print $2}')
dpkg --compare-versions "$rustc_version" ge "$rust_min" ||
    die "rustc $rustc_version is older than Cargo.toml's rust-version $rust_min"
arch=$(dpkg --print-architecture)
deb_name=${pkg}_${deb_version}_${arch}.deb
say "[2/4] $pkg $deb_version ($arch), rustc $rustc_version ($(command -v rustc)), nginx-dev $(dpkg-query -W -f='${Version}' nginx-dev)"

# --- 3. build in a copy ----------------------------------------------------------------------
build_root=$out/build
src=$build_root/$pkg-$crate_version
rm -rf "$build_root"
mkdir -p "$src"
if [ -e .git ] && git rev-parse --git-dir >/dev/null 2>&1; then
    # Tracked and untracked files that .gitignore does not exclude (target/ is ignored),
    # without files deleted in the work tree; tar keeps mtimes, so cargo's incremental
    # build in target/deb/cargo sees unchanged sources as unchanged.
    git ls-files -z -co --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -xf - -C "$src"
else
    tar --exclude=./target --exclude=./.git -cf - . | tar -xf - -C "$src"
fi
say "[3/4] copied the source to ${src#"$here"/}; dpkg-buildpackage (log: target/deb/build.log)"

bd_flag=()
if ! unmet=$(cd "$src" && dpkg-checkbuilddeps 2>&1); then
    unmet=${unmet#*Unmet build dependencies: }
    others=$(printf '%s\n' "$unmet" | sed -E 's/\([^)]*\)//g; s/ +/\n/g' | grep -vE '^(rustc|cargo|)$' || true)
    [ -z "$others" ] || die "unmet build dependencies: $unmet"
    say "unmet only: $unmet (Debian 12's rustc is too old; using $(command -v cargo)) -> dpkg-buildpackage -d"
    bd_flag=(-d)
fi

t0=$SECONDS
if ! (cd "$src" && RCACHE_DEB_CARGO_TARGET=$cargo_target \
    dpkg-buildpackage -us -uc -b "${bd_flag[@]}") >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log" >&2
    die "dpkg-buildpackage failed after $((SECONDS - t0))s (full log: $out/build.log)"
fi
say "dpkg-buildpackage: ok ($((SECONDS - t0))s)"

rm -f "$out"/*.deb
cp "$build_root"/*.deb "$out"/
[ -f "$out/$deb_name" ] || die "dpkg-buildpackage did not produce $deb_name"

# --- 4. lintian --------------------------------------------------------------------------------
say "[4/4] lintian $deb_name"
lintian_rc=0
lintian --display-info --show-overrides --fail-on error "$out/$deb_name" >&2 || lintian_rc=$?
if [ $lintian_rc -eq 0 ]; then
    say "lintian: no errors"
else
    die "lintian reported errors (exit $lintian_rc)"
fi

ls -l "$out"/*.deb >&2
say "done in $((SECONDS - t_start))s"
echo "$out/$deb_name"
