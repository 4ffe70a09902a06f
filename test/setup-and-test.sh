#!/usr/bin/env bash
# Installs what sluice's tests need on a fresh Debian machine (which has
# only Go, git and gcc), then runs every test (`make test`).
#
# apt waits up to 10 minutes for a dpkg lock held by another apt or dpkg
# (DPkg::Lock::Timeout) instead of failing, and prints a line per package.
# The end-to-end tests install and purge the sluice package only inside a
# private mount namespace (test/privateroot_test.go): a sluice already
# installed on the machine is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v make >/dev/null || need+=(make)
command -v promtool >/dev/null || need+=(prometheus)
command -v protoc >/dev/null || need+=(protobuf-compiler)
# packaging and real-server tests (test/package_test.go, test/servers_test.go)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/fcgiwrap ] || need+=(fcgiwrap)
command -v lintian >/dev/null || need+=(lintian)
# many client addresses in the storm benchmark; JSON checks of sluice status
command -v socat >/dev/null || need+=(socat)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
    echo "setup: apt-get update"
    apt-get "${apt_opts[@]}" update -q
    echo "setup: installing ${need[*]}"
    apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${need[@]}" |
      grep --line-buffered -E '^(Get:|Setting up|E:|W:)' || true
    missing=()
    for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
      echo "setup: could not install ${missing[*]} (see apt's messages above)" >&2
      exit 1
    fi
  else
    echo "setup: not root; install ${need[*]} yourself for the full suite" >&2
  fi
fi
echo "setup: done in ${SECONDS}s; running make test"
make test
