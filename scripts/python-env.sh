#!/usr/bin/env bash
# The Python the cluster tests use to write keys exactly as applications do: Debian's
# python3 with its pylibmc (python3-pylibmc, libmemcached) plus pymemcache from PyPI (the
# client of Django's default PyMemcacheCache), in a venv at target/pyenv.
#
#   scripts/python-env.sh        # creates or checks target/pyenv; prints its python
#
# Idempotent: does nothing when the venv already imports both clients. Needs the packages
# of scripts/install-deps.sh (python3-venv, python3-pylibmc) and PyPI.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${RCACHE_PYENV:-$here/target/pyenv}
pymemcache=${RCACHE_PYMEMCACHE_VERSION:-4.0.0}
py=$venv/bin/python3

check() { "$py" -c 'import pymemcache, pylibmc' 2>/dev/null; }

if [ -x "$py" ] && check; then
    echo "$py"
    exit 0
fi
echo "python-env: creating $venv (Debian python3 + pylibmc, pymemcache==$pymemcache from PyPI)" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "pymemcache==$pymemcache" >&2
check || {
    echo "python-env: $py cannot import pymemcache and pylibmc (apt-get install python3-pylibmc?)" >&2
    exit 1
}
echo "$py"
