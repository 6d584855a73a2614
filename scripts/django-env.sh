#!/usr/bin/env bash
# The Python the Django example (examples/django-blog/) and its tests (tests/django_blog.rs)
# run on: Debian's python3 in a venv at target/django-env with Django 4.2 LTS, pymemcache
# (the client of Django's PyMemcacheCache) and gunicorn, all from PyPI.
#
#   scripts/django-env.sh        # creates or checks target/django-env; prints its python
#
# Idempotent: does nothing when the venv already has the pinned versions. Progress goes to
# stderr; the last line on stdout is the venv's python. Needs python3-venv
# (scripts/install-deps.sh) and PyPI.
#
# Environment:
#   RCACHE_DJANGO_ENV=DIR    the venv (default target/django-env)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${RCACHE_DJANGO_ENV:-$here/target/django-env}
django='Django==4.2.*'
pymemcache='pymemcache==4.0.0'
gunicorn='gunicorn==23.0.0'
py=$venv/bin/python3

check() {
    "$py" - <<'PY' 2>/dev/null
import django, pymemcache, gunicorn
assert django.VERSION[:2] == (4, 2), django.VERSION
assert pymemcache.__version__ == "4.0.0", pymemcache.__version__
assert gunicorn.__version__ == "23.0.0", gunicorn.__version__
PY
}

if [ -x "$py" ] && check; then
    echo "$py"
    exit 0
fi
echo "django-env: creating $venv ($django, $pymemcache, $gunicorn from PyPI)" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$django" "$pymemcache" "$gunicorn" >&2
check || {
    echo "django-env: $py does not have $django, $pymemcache and $gunicorn" >&2
    exit 1
}
echo "django-env: ready: $("$py" -c 'import django; print("Django", django.get_version())')" >&2
echo "$py"
