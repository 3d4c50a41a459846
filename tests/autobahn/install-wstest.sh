#!/usr/bin/env bash
# Installs the Autobahn|Testsuite `wstest` command that tests/test_autobahn.py drives.
#
# wstest runs only on Python 2.7, so this script
#   1. finds a 2.7 interpreter: $PYTHON27, else python2.7 / python2 on PATH, else the newest
#      2.7.x that pyenv has installed;
#   2. pip-installs requirements-py27.txt (next to this script, fully pinned) into DIR/site, a
#      private folder (`--target`: the interpreter's own site-packages are left alone);
#   3. writes the launcher DIR/wstest and checks that it runs;
#   4. prints the launcher's path as the last line of its output.
# Run again with unchanged requirements, it reuses DIR and returns at once.
#
#   usage: tests/autobahn/install-wstest.sh [DIR]
#          DIR defaults to $RAWRT_WSTEST_DIR, else ${TMPDIR:-/tmp}/rawrt-wstest
#   then:  export RAWRT_WSTEST=$(tests/autobahn/install-wstest.sh | tail -n 1)
#          pytest tests/test_autobahn.py
set -euo pipefail

die() {
  echo "install-wstest: $*" >&2
  exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
requirements=$here/requirements-py27.txt
[[ -r $requirements ]] || die "missing $requirements"

dir=${1:-${RAWRT_WSTEST_DIR:-${TMPDIR:-/tmp}/rawrt-wstest}}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd) # absolute, because the launcher must work from any directory
launcher=$dir/wstest

# Already installed from the same requirements and working: nothing to do.
if [[ -x $launcher ]] && cmp -s "$requirements" "$dir/requirements-py27.txt" &&
  "$launcher" -a >/dev/null 2>&1; then
  echo "$launcher"
  exit 0
fi

# Prints the real interpreter behind $1 (not a pyenv shim) if it is Python 2.7.
real_py27() {
  "$1" -c 'import sys
if sys.version_info[:2] != (2, 7): sys.exit(1)
print(sys.executable)' 2>/dev/null
}

find_py27() {
  local candidate path root version
  for candidate in "${PYTHON27:-}" python2.7 python2; do
    [[ -n $candidate ]] || continue
    path=$(command -v "$candidate" 2>/dev/null) || continue
    real_py27 "$path" && return 0
  done
  command -v pyenv >/dev/null 2>&1 || return 1
  root=$(pyenv root)
  version=$(pyenv versions --bare 2>/dev/null | grep -E '^2\.7\.[0-9]+$' |
    sort -t. -k3,3n | tail -n 1) || true
  [[ -n $version ]] && real_py27 "$root/versions/$version/bin/python"
}

py=$(find_py27) || die "no Python 2.7 interpreter found (set PYTHON27, put python2.7 on PATH,
or install one with pyenv: pyenv install 2.7.18); the Autobahn|Testsuite needs it"
"$py" -m pip --version >/dev/null 2>&1 || die "$py has no pip (try: $py -m ensurepip)"

# Install into a fresh folder and swap it in, so a failed install leaves no half state.
rm -rf "$dir/site.new"
if ! PYTHONNOUSERSITE=1 PIP_USER=0 "$py" -m pip install --disable-pip-version-check \
  --no-warn-script-location --target "$dir/site.new" -r "$requirements" \
  >"$dir/pip.log" 2>&1; then
  tail -n 30 "$dir/pip.log" >&2
  die "pip install failed; full log in $dir/pip.log"
fi
rm -rf "$dir/site"
mv "$dir/site.new" "$dir/site"

# The launcher. site.addsitedir (not PYTHONPATH) so that the .pth files of namespace packages
# (zope.interface) are processed; the caller's Python 3 environment variables are dropped.
code='import os, site, sys
site.addsitedir(os.environ.pop("RAWRT_WSTEST_SITE"))
sys.argv[0] = "wstest"
from autobahntestsuite.wstest import run
run()'
{
  echo '#!/usr/bin/env bash'
  echo '# Autobahn|Testsuite wstest on Python 2.7; written by install-wstest.sh.'
  echo 'unset PYTHONPATH PYTHONHOME'
  echo 'export PYTHONNOUSERSITE=1 PYTHONWARNINGS=ignore'
  printf 'export RAWRT_WSTEST_SITE=%q\n' "$dir/site"
  printf 'exec %q -c %q "$@"\n' "$py" "$code"
} >"$launcher.new"
chmod +x "$launcher.new"
mv "$launcher.new" "$launcher"

"$launcher" -a >/dev/null || die "the installed wstest does not run; see $dir/pip.log"
cp "$requirements" "$dir/requirements-py27.txt"
echo "$launcher"
