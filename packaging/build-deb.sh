#!/usr/bin/env bash
# build-deb.sh OUTDIR [VERSION]: build bin/sluice_<version>_amd64.deb
# reproducibly with dpkg-deb from a staged tree (`make deb` runs it).
#
# Reproducible: binaries built with -trimpath and -buildvcs=false, every
# mtime set to SOURCE_DATE_EPOCH (default: the last commit's time), owner
# root:root (--root-owner-group), explicit modes, gzip -n, and dpkg-deb
# (>= 1.18.11) sorts the archive and stamps it with SOURCE_DATE_EPOCH.
# Two builds of the same tree give byte-identical packages.
set -euo pipefail
umask 022
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${1:?usage: build-deb.sh OUTDIR [VERSION]}"
version="${2:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}"
GO="${GO:-go}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}"
export TZ=UTC LC_ALL=C

# A Debian version must start with a digit: v1.2.3 -> 1.2.3; an untagged
# commit (0e59703, 0e59703-dirty) -> 0.0~git<date>.<commit>[.dirty].
case "$version" in
v[0-9]*) debver="${version#v}" ;;
[0-9]*.*) debver="$version" ;;
*)
	date="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d)"
	debver="0.0~git$date.${version//-/.}"
	;;
esac
debver="${debver//-/.}-1" # Debian revision 1: not a native package

stage="$(mktemp -d "${TMPDIR:-/tmp}/sluice-deb.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/root"
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/sluice/bin" "$pkg/usr/lib/sluice/git-core" \
	"$pkg/lib/systemd/system" "$pkg/usr/lib/sysusers.d" "$pkg/etc/sluice" \
	"$pkg/usr/share/sluice" "$pkg/usr/share/doc/sluice" "$pkg/usr/share/lintian/overrides"

(cd "$root" && CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false \
	-ldflags "-s -w -buildid= -X main.version=$version" -o "$pkg/usr/bin/" \
	./cmd/sluiced ./cmd/sluice-shim ./cmd/sluice)
chmod 0755 "$pkg/usr/bin/"*

# The shim links. /usr/lib/sluice/bin goes first on a server's PATH;
# /usr/lib/sluice/git-core is a GIT_EXEC_PATH for servers that run git
# from their exec path (git daemon, git-http-backend), see README.md.
for n in git git-upload-pack git-receive-pack git-upload-archive; do
	ln -s ../../../bin/sluice-shim "$pkg/usr/lib/sluice/bin/$n"
	ln -s ../../../bin/sluice-shim "$pkg/usr/lib/sluice/git-core/$n"
done

# The conffile is exactly the embedded default policy.
"$pkg/usr/bin/sluice" validate --print-defaults >"$pkg/etc/sluice/sluice.toml"
chmod 0644 "$pkg/etc/sluice/sluice.toml"

install -m 0644 "$here/systemd/sluiced.service" "$pkg/lib/systemd/system/sluiced.service"
install -m 0644 "$here/systemd/sluice.sysusers" "$pkg/usr/lib/sysusers.d/sluice.conf"
install -m 0644 "$here/gitconfig" "$pkg/usr/share/sluice/gitconfig"
install -m 0644 "$here/grafana/sluice-dashboard.json" "$pkg/usr/share/sluice/grafana-dashboard.json"
install -m 0644 "$here/prometheus/sluice-rules.yml" "$pkg/usr/share/sluice/prometheus-rules.yml"
install -m 0644 "$here/debian/lintian-overrides" "$pkg/usr/share/lintian/overrides/sluice"
install -m 0644 "$here/debian/copyright" "$pkg/usr/share/doc/sluice/copyright"
install -m 0644 "$here/README.md" "$pkg/usr/share/doc/sluice/README.md"
{
	echo "sluice ($debver) unstable; urgency=medium"
	echo
	echo "  * Package built from sluice $version."
	echo
	echo " -- sluice maintainers <sluice@sluicehq.invalid>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$pkg/usr/share/doc/sluice/changelog.Debian.gz"
chmod 0644 "$pkg/usr/share/doc/sluice/changelog.Debian.gz"

for s in postinst prerm postrm; do
	install -m 0755 "$here/debian/$s" "$pkg/DEBIAN/$s"
done
echo /etc/sluice/sluice.toml >"$pkg/DEBIAN/conffiles"
size="$(du -s --apparent-size --block-size=1024 --exclude=DEBIAN "$pkg" | cut -f1)"
sed -e "s/@VERSION@/$debver/" -e "s/@SIZE@/$size/" "$here/debian/control.in" >"$pkg/DEBIAN/control"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"

find "$pkg" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
deb="$out/sluice_${debver}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
