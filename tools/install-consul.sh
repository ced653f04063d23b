#!/usr/bin/env bash
# Puts a Consul binary at tools/bin/consul, without touching the system's apt state.
#
# A `consul` already on PATH is used as is (linked). Otherwise Debian's bullseye
# suite carries package `consul` 1.8.7: we point apt at the same Debian archive
# the system's own sources use (derived from them, never hard-coded), with a
# temporary sources list, lists dir and cache, then `apt-get download` and
# `dpkg -x` the package into a scratch dir.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# CONSUL_INSTALL_DIR: where to put it (tools/check-install-consul.sh uses empty
# scratch dirs); tools/bin by default.
bindir="${CONSUL_INSTALL_DIR:-$here/bin}"
mkdir -p "$bindir"

if [ -x "$bindir/consul" ] && "$bindir/consul" version >/dev/null 2>&1; then
    exit 0
fi
if command -v consul >/dev/null 2>&1 && [ "$(command -v consul)" != "$bindir/consul" ]; then
    ln -sf "$(command -v consul)" "$bindir/consul"
    echo "install-consul: using $(command -v consul)"
    exit 0
fi

# The Debian archive URI from the system's apt sources (deb822 or one-line style).
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    mirror=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' "$f")
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
    # awk reads the files itself: a `cat | awk ... exit` pipe would kill cat
    # with SIGPIPE, which pipefail turns into a failed install.
    lists=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && lists+=("$f")
    done
    if [ ${#lists[@]} -gt 0 ]; then
        mirror=$(awk '$1 == "deb" && !found {for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) {print $i; found = 1; break}}' "${lists[@]}")
    fi
fi
if [ -z "$mirror" ]; then
    echo "install-consul: no Debian archive found in the apt sources; put a consul binary on PATH" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ -f "$keyring" ]; then
    echo "deb [signed-by=$keyring] $mirror bullseye main" >"$work/sources.list"
else
    echo "deb $mirror bullseye main" >"$work/sources.list"
fi
apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" -qq update
(cd "$work" && apt-get "${apt_opts[@]}" -qq download consul)
dpkg -x "$work"/consul_*.deb "$work/root"
# Install under a temporary name and rename: an interrupted run never leaves a
# half-written tools/bin/consul behind.
install -m 0755 "$work/root/usr/bin/consul" "$bindir/.consul.tmp.$$"
mv -f "$bindir/.consul.tmp.$$" "$bindir/consul"
# No pipe into `head` here: under pipefail, consul dying of SIGPIPE when head exits
# first failed the whole install at random (make's "Error 141").
version=$("$bindir/consul" version)
echo "install-consul: ${version%%$'\n'*}"
