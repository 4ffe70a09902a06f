#!/usr/bin/env bash
# Installs what sluice's tests need on a fresh Debian machine (which has
# only Go, git and gcc), then runs every test (`make test`).
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
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: not root; install ${need[*]} yourself for the full suite" >&2
  fi
fi
make test
