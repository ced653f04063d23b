#!/usr/bin/env bash
# Runs tools/install-consul.sh N times in a row (default 30), each from an empty
# install dir, and fails on the first failure: the fresh-machine install must
# never fail at random (it once died of SIGPIPE, "make: Error 141").
#
#   bash tools/check-install-consul.sh [N]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n="${1:-30}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Without a consul on PATH, so each run takes the download path.
path=$(printf '%s' "$PATH" | tr ':' '\n' | while read -r d; do [ -x "$d/consul" ] || printf '%s:' "$d"; done)
ok=0
for i in $(seq 1 "$n"); do
    dir="$scratch/run$i"
    if ! PATH="${path%:}" CONSUL_INSTALL_DIR="$dir" bash "$here/install-consul.sh" >"$scratch/log$i" 2>&1; then
        echo "run $i of $n FAILED:" >&2
        cat "$scratch/log$i" >&2
        exit 1
    fi
    "$dir/consul" version >/dev/null
    ok=$((ok + 1))
done
echo "install-consul: $ok of $n runs from an empty dir succeeded"
