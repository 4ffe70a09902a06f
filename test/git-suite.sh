#!/bin/sh
# git-suite.sh GIT_SRC [TEST...]: run scripts of git's own test suite with
# sluice-shim standing in for git, against a sluiced of this tree (bin/,
# 'make build') that admits upload-pack, receive-pack and upload-archive.
#
# GIT_SRC is a git source tree of the installed git's version (Debian:
# 'apt-get source git' with a deb-src entry) in which the test helpers are
# built:
#   make NO_CURL=1 NO_EXPAT=1 NO_OPENSSL=1 NO_GETTEXT=1 NO_TCLTK=1 NO_PERL=1 \
#        NO_PYTHON=1 t/helper/test-tool templates GIT-BUILD-OPTIONS
# The scripts run the INSTALLED git (GIT_TEST_INSTALLED) through a directory
# whose only entry, git, is the shim, with an exec path (GIT_TEST_EXEC_PATH)
# mirroring the real one but for git, git-upload-pack, git-receive-pack and
# git-upload-archive, which are the shim: so local transports (file://,
# "git fetch ..") reach the shim too, as on a wired server. TEST defaults to
# t5530-upload-pack-error.sh. Exits with the first failing script's status;
# prints how many commands sluiced admitted.
set -eu
src=${1:?usage: test/git-suite.sh GIT_SRC [TEST...]}
shift
[ $# -gt 0 ] || set -- t5530-upload-pack-error.sh
here=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$here/bin/sluiced" ] && [ -x "$here/bin/sluice-shim" ] || { echo "git-suite.sh: run 'make build' first" >&2; exit 2; }
[ -x "$src/t/helper/test-tool" ] || { echo "git-suite.sh: $src/t/helper/test-tool is not built (see the comment at the top)" >&2; exit 2; }

dir=$(mktemp -d /tmp/sluice-git-suite.XXXXXX)
agent=
cleanup() {
	[ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM
mkdir "$dir/bin" "$dir/exec"
ln -s "$here/bin/sluice-shim" "$dir/bin/git"
real=$(git --exec-path)
for f in "$real"/*; do
	ln -s "$f" "$dir/exec/${f##*/}"
done
for f in git git-upload-pack git-receive-pack git-upload-archive; do
	ln -sf "$here/bin/sluice-shim" "$dir/exec/$f"
done
cat > "$dir/sluice.toml" <<EOF
[agent]
socket = "$dir/sluice.sock"
metrics_addr = "127.0.0.1:0"
fail_mode = "closed"
[git]
bin = "$(command -v git)"
[cgroups]
enabled = false
[[limit]]
name = "git"
match = ["upload-pack", "receive-pack", "upload-archive"]
key = "repo"
max_per_key = 8
max_queue_size = 16
max_queue_wait = "30s"
EOF
"$here/bin/sluiced" -config "$dir/sluice.toml" > "$dir/sluiced.log" 2>&1 &
agent=$!
i=0
until grep -q '"sluiced ready"' "$dir/sluiced.log"; do
	i=$((i + 1))
	[ $i -lt 200 ] || { cat "$dir/sluiced.log" >&2; exit 1; }
	sleep 0.1
done

status=0
for t in "$@"; do
	(cd "$src/t" && SLUICE_SOCKET="$dir/sluice.sock" SLUICE_SHIM_LOG="$dir/shim.log" \
		GIT_TEST_INSTALLED="$dir/bin" GIT_TEST_EXEC_PATH="$dir/exec" sh "$t") || { status=$?; break; }
done
echo "sluiced admitted $(grep -c '"msg":"command finished"' "$dir/sluiced.log") commands through the shim"
exit $status
