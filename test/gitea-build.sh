#!/usr/bin/env bash
# Build Gitea for sluice's end-to-end test (make test-gitea) and cache it.
#
#   test/gitea-build.sh [version [patch]]   # default v1.26.0, no patch
#
# Output: $SLUICE_GITEA_CACHE (default /var/cache/sluice-test/gitea-<version>/,
# or gitea-<version>+<patch file name without .patch>/ with a patch)
# holding `gitea` plus the `options/` and `templates/` trees it reads at run
# time (built without the bindata tag: embedding needs the web frontend
# built by npm, which git over HTTP/SSH and the API do not need). A finished
# build writes `ok`; a second run with `ok` present does nothing.
#
# The module comes from the Go module proxy. Gitea's go.mod has replace
# directives, so `go install code.gitea.io/gitea@v` refuses it: the module
# directory is copied to a writable place and built there. sqlite needs cgo
# and the tags `sqlite sqlite_unlock_notify`.
set -euo pipefail
version=${1:-v1.26.0}
patchfile=${2:-}
GO=${GO:-go}
suffix=
if [[ -n $patchfile ]]; then
  patchfile=$(realpath "$patchfile")
  suffix=+$(basename "$patchfile" .patch)
fi
cache=${SLUICE_GITEA_CACHE:-/var/cache/sluice-test/gitea-$version$suffix}
if [[ -f $cache/ok && -x $cache/gitea ]]; then
  echo "gitea $version: cached in $cache"
  exit 0
fi
command -v gcc >/dev/null || { echo "gitea-build: gcc is missing (cgo for sqlite): apt-get install gcc" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [[ -f $cache/ok && -x $cache/gitea ]]; then
  echo "gitea $version: cached in $cache (built by another run)"
  exit 0
fi
start=$(date +%s)
dir=$(cd "$cache" && GOFLAGS= "$GO" mod download -json "code.gitea.io/gitea@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -n $dir && -d $dir ]] || { echo "gitea-build: go mod download code.gitea.io/gitea@$version gave no module directory" >&2; exit 1; }
src=$cache/src
rm -rf "$src" "$cache/options" "$cache/templates"
cp -r "$dir" "$src"
chmod -R u+w "$src"
if [[ -n $patchfile ]]; then
  (cd "$src" && patch -p1 --quiet < "$patchfile")
  echo "gitea $version: applied $patchfile"
fi
echo "gitea $version: building in $src (cgo, tags sqlite sqlite_unlock_notify; the first build takes minutes)"
(cd "$src" && CGO_ENABLED=1 "$GO" build -trimpath -tags 'sqlite sqlite_unlock_notify' \
  -ldflags "-s -w -X main.Version=${version#v} -X 'main.Tags=sqlite sqlite_unlock_notify'" \
  -o "$cache/gitea.new" .)
mv "$cache/gitea.new" "$cache/gitea"
cp -r "$src/options" "$src/templates" "$cache/"
rm -rf "$src"
echo "$version$suffix built in $(( $(date +%s) - start ))s on $(date -u +%FT%TZ)" > "$cache/ok"
cat "$cache/ok"
