#!/usr/bin/env bash
# boards/snapdragon-8gen2-adreno740/build-deps.sh - build the three C libraries
# idefics-edge needs and Android lacks (zstd, xxhash, stb_image) with the NDK
# into PREFIX, with pkg-config files, for cross.ini's pkg_config_libdir.
# Static libraries, so libidefics_jni.so carries them and the app ships one .so.
# libjpeg-turbo and cJSON are not needed: configure with -Djpeg=disabled
# -Dconverter=false (convert models on a PC). pthread, dl and m are in bionic.
#
#   build-deps.sh NDK_DIR PREFIX SRC_DIR
# SRC_DIR holds unpacked sources (download them yourself; the versions Debian 12 uses):
#   zstd-1.5.4/  (github.com/facebook/zstd releases)   xxHash-0.8.1/  (github.com/Cyan4973/xxHash)
#   stb/         (github.com/nothings/stb, for stb_image.h)
# UNTESTED HERE: the CI machine has no NDK.
set -euo pipefail
ndk=$1 prefix=$2 src=$3
api=${ANDROID_API:-26}
bin=$ndk/toolchains/llvm/prebuilt/linux-x86_64/bin
cc="$bin/aarch64-linux-android$api-clang"
ar="$bin/llvm-ar"
cflags="-O2 -fPIC -march=armv8.2-a+dotprod+fp16+i8mm"
mkdir -p "$prefix/include/stb" "$prefix/lib/pkgconfig"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# zstd: the library's own Makefile, static, no multithreading (the runtime has its own pool)
make -C "$src/zstd-1.5.4/lib" -j4 libzstd.a CC="$cc" AR="$ar" CFLAGS="$cflags" ZSTD_LEGACY_SUPPORT=0
cp "$src/zstd-1.5.4/lib/libzstd.a" "$prefix/lib/"
cp "$src"/zstd-1.5.4/lib/{zstd.h,zstd_errors.h,zdict.h} "$prefix/include/"

# xxhash: one C file
"$cc" $cflags -c "$src/xxHash-0.8.1/xxhash.c" -o "$work/xxhash.o"
"$ar" rcs "$prefix/lib/libxxhash.a" "$work/xxhash.o"
cp "$src/xxHash-0.8.1/xxhash.h" "$prefix/include/"

# stb_image: the header plus one file that instantiates it (Debian's libstb does the same)
cp "$src/stb/stb_image.h" "$prefix/include/stb/"
printf '#define STB_IMAGE_IMPLEMENTATION\n#include "stb_image.h"\n' > "$work/stb_image.c"
"$cc" $cflags -I"$prefix/include/stb" -c "$work/stb_image.c" -o "$work/stb_image.o"
"$ar" rcs "$prefix/lib/libstb.a" "$work/stb_image.o"

pc() { # name libs cflags
    cat > "$prefix/lib/pkgconfig/$1.pc" <<PC
prefix=$prefix
Name: $1
Description: $1 for Android arm64-v8a (idefics-edge build-deps.sh)
Version: 0
Libs: -L\${prefix}/lib $2
Cflags: $3
PC
}
pc libzstd -lzstd "-I\${prefix}/include"
pc libxxhash -lxxhash "-I\${prefix}/include"
pc stb "-lstb -lm" "-I\${prefix}/include/stb"
echo "deps in $prefix; now: meson setup build-android --cross-file boards/snapdragon-8gen2-adreno740/cross.ini ..."
