#!/usr/bin/env bash
# test_pkgconfig.sh - an integrator's build: `meson install` into a DESTDIR, then
# examples/simple.c compiled from outside the tree with only
# `pkg-config --cflags --libs idefics`, and run on the demo model:
#   test_pkgconfig.sh BUILD_DIR SOURCE_DIR MODEL.idfx IMAGE
# PKG_CONFIG_SYSROOT_DIR points pkg-config's -I/-L at the DESTDIR copy, as for a
# sysroot. Skips (77) without meson, pkg-config or a C compiler.
set -u
build=$(realpath "$1") src=$(realpath "$2") model=$(realpath "$3") image=$(realpath "$4")
for t in meson pkg-config cc; do
    command -v $t >/dev/null || { echo "SKIP: $t not found"; exit 77; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
set -x
meson install -C "$build" --destdir "$tmp/dest" --no-rebuild --quiet >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log"; echo "FAIL: meson install"; exit 1; }
pc=$(find "$tmp/dest" -name idefics.pc | head -n 1)
[ -n "$pc" ] || { echo "FAIL: no idefics.pc installed"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR=$tmp/dest PKG_CONFIG_LIBDIR=$(dirname "$pc")
pkg-config --modversion idefics
cflags=$(pkg-config --cflags idefics) libs=$(pkg-config --libs idefics)
libdir=$tmp/dest$(pkg-config --variable=libdir idefics | sed "s|^$tmp/dest||")
mkdir "$tmp/outside" && cp "$src/examples/simple.c" "$tmp/outside/"
cd "$tmp/outside"
cc -std=c11 -Wall -Werror simple.c $cflags $libs -o simple || { echo "FAIL: compile with pkg-config flags"; exit 1; }
answer=$(LD_LIBRARY_PATH=$libdir ./simple "$model" "$image" "What shape is in the image?")
rc=$?
set +x
echo "answer: $answer"
[ $rc -eq 0 ] && echo "$answer" | grep -Eqx "circle|square|triangle" || { echo "FAIL: rc $rc"; exit 1; }
# the binary really uses the installed library, not the build tree's
LD_LIBRARY_PATH=$libdir ldd ./simple | grep -q "$tmp/dest" || { echo "FAIL: not linked to the DESTDIR copy"; exit 1; }
echo "test_pkgconfig: ok"
