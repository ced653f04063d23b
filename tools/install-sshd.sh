#!/usr/bin/env bash
# Puts an OpenSSH server binary at tools/bin/sshd for the salt-ssh tests
# (tests/integration/test_salt_ssh.py), without touching the system's apt state.
#
# An `sshd` already on the system is used as is (linked). Otherwise apt downloads
# Debian's `openssh-server` from the sources the system itself names (its own
# release, so the binary links against the libraries installed here), with a
# temporary lists dir and cache; `dpkg -x` unpacks it into a scratch dir and only
# the sshd binary (and any library it needs that the system lacks) is kept.
# Nothing is installed system-wide.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bindir="${SSHD_INSTALL_DIR:-$here/bin}"
mkdir -p "$bindir"

# What Debian's openssh-server sets up for an sshd started as root, and what the
# binary alone lacks: the privilege separation user `sshd` (the package's
# postinst adds it the same way) and its folder /run/sshd (a tmpfs: gone after
# every reboot, so this runs on every call, also when sshd is already here).
if [ "$(id -u)" = 0 ]; then
    if ! getent passwd sshd >/dev/null; then
        useradd --system --no-create-home --home-dir /run/sshd --shell /usr/sbin/nologin sshd
    fi
    mkdir -p -m 0755 /run/sshd
fi

if [ -x "$bindir/sshd" ] && "$bindir/sshd" -V >/dev/null 2>&1; then
    exit 0
fi
# sshd prints its version with -V (on stderr) and exits 0 from OpenSSH 9.2 on;
# older ones reject -V, so only "is it executable" is checked for a system one.
for candidate in "$(command -v sshd 2>/dev/null || true)" /usr/sbin/sshd; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$candidate" != "$bindir/sshd" ]; then
        ln -sf "$candidate" "$bindir/sshd"
        echo "install-sshd: using $candidate"
        exit 0
    fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
# The system's own sources (Dir::Etc::SourceList and SourceParts keep their
# defaults); only where apt keeps its lists and downloads is redirected.
apt_opts=(
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" -qq update
# libwrap0 too: Debian's sshd links it, and minimal images often lack it.
(cd "$work" && apt-get "${apt_opts[@]}" -qq download openssh-server libwrap0)
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$work/root"
done
# Keep the binary and any library it needs that the system lacks (found among
# the unpacked ones) in tools/bin/sshd.d; tools/bin/sshd runs it with them.
libdir="$bindir/sshd.d/lib"
rm -rf "$bindir/sshd.d.tmp.$$"
mkdir -p "$bindir/sshd.d.tmp.$$/lib"
install -m 0755 "$work/root/usr/sbin/sshd" "$bindir/sshd.d.tmp.$$/sshd"
for lib in $(ldd "$work/root/usr/sbin/sshd" | awk '$2 == "=>" && $3 == "not" {print $1}'); do
    # -print -quit, not a pipe into head: under pipefail find could die of SIGPIPE (141).
    found=$(find "$work/root" -name "$lib" -print -quit)
    if [ -z "$found" ]; then
        echo "install-sshd: sshd needs $lib, which neither the system nor the downloaded packages have" >&2
        exit 1
    fi
    cp -L "$found" "$bindir/sshd.d.tmp.$$/lib/$lib"
done
rm -rf "$bindir/sshd.d"
mv "$bindir/sshd.d.tmp.$$" "$bindir/sshd.d"
# sshd re-executes itself by the absolute path it was started with, so the
# wrapper execs the real binary by its absolute path.
cat >"$bindir/.sshd.tmp.$$" <<WRAPPER
#!/bin/sh
LD_LIBRARY_PATH="$libdir" exec "$bindir/sshd.d/sshd" "\$@"
WRAPPER
chmod 0755 "$bindir/.sshd.tmp.$$"
# Temporary name, then rename: an interrupted run never leaves a half-written wrapper.
mv -f "$bindir/.sshd.tmp.$$" "$bindir/sshd"
version=$("$bindir/sshd" -V 2>&1 || true)
echo "install-sshd: ${version:0:200}"
