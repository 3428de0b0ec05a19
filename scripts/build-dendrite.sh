#!/usr/bin/env bash
# Builds the pinned Dendrite homeserver (tools/dendrite/go.mod) into .cache/bin/ for the
# end-to-end tests in e2e/. Skips the build when the binary matches the pinned module
# graph and Go toolchain (a stamp file records both), because a cold build takes minutes.
# Usage: scripts/build-dendrite.sh [-f]   (-f rebuilds even when up to date)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tooldir="$root/tools/dendrite"
bindir="$root/.cache/bin"
bin="$bindir/dendrite"
stamp="$bindir/dendrite.stamp"

version="$(cd "$tooldir" && go list -m -f '{{.Version}}' github.com/element-hq/dendrite)"
# The stamp covers the module graph (go.mod, go.sum) and the toolchain, not only the tag.
sum="$(cat "$tooldir/go.mod" "$tooldir/go.sum" | sha256sum | cut -d' ' -f1)"
want="dendrite=$version go=$(go env GOVERSION) cgo=0 sum=$sum"

if [[ "${1:-}" != "-f" && -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
	echo "dendrite $version is up to date: $bin"
	exit 0
fi

mkdir -p "$bindir"
rm -f "$stamp"
echo "building dendrite $version into $bindir (a cold build takes a few minutes)"
start=$SECONDS
# CGO off: Dendrite then uses its pure Go SQLite driver, so no C toolchain is needed.
# Build to a temporary name first so an interrupted build never leaves a half binary.
(cd "$tooldir" && CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" github.com/element-hq/dendrite/cmd/dendrite)
mv -f "$bin.tmp" "$bin"
printf '%s\n' "$want" >"$stamp"
echo "built dendrite $version in $((SECONDS - start))s: $bin"
