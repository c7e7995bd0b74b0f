# tools/lib/setup.sh - sourced by tools/run-demo and tools/run-tests.
# Installs what a fresh Debian/Ubuntu machine lacks, then configures and builds.

idefics_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Debian packages the build and the tests need.
IDEFICS_APT_PACKAGES="meson ninja-build gcc clang pkg-config libzstd-dev libxxhash-dev libstb-dev libjpeg62-turbo-dev \
libcjson-dev ocl-icd-opencl-dev opencl-headers ocl-icd-libopencl1 pocl-opencl-icd libclblast-dev clinfo zstd \
openjdk-17-jdk-headless"
# openjdk-17-jdk-headless: javac/java and jni.h for libidefics_jni.so and its test (tests/test_jni.sh).
# libjpeg62-turbo-dev is Debian's name; Ubuntu calls the same package libjpeg-turbo8-dev (known bug).
if grep -qsi '^ID=ubuntu' /etc/os-release; then IDEFICS_APT_PACKAGES=${IDEFICS_APT_PACKAGES/libjpeg62-turbo-dev/libjpeg-turbo8-dev}; fi
# tools/run-cross-tests adds its own: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user dpkg-dev.
IDEFICS_APT_PACKAGES+=" mesa-opencl-icd"  # Mesa Rusticl (llvmpipe): the OpenCL suites' second implementation (tests/meson.build)
IDEFICS_APT_PACKAGES+=" libwebp-dev libheif-dev libtiff-dev libexif-dev libxml2-dev zlib1g-dev libimage-exiftool-perl chromium"  # caption (issue 12): WebP/HEIC/TIFF decoders, EXIF orientation, XMP sidecars, bomb-set PNGs, exiftool and headless Chromium in tests

idefics_install_deps() {
    local missing=()
    for p in $IDEFICS_APT_PACKAGES ${IDEFICS_EXTRA_PACKAGES:-}; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# idefics_build BUILD_DIR [meson options...]
idefics_build() {
    local dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$idefics_root" "$@" >&2
    fi
    ninja -C "$dir" >&2
}
IDEFICS_APT_PACKAGES+=" libedit-dev"  # line editing and history in `idefics chat` (meson -Dlibedit=auto)
IDEFICS_APT_PACKAGES+=" tmux"  # tests/test_cli_chat_tty.sh: idefics chat on a real terminal (line editing, Ctrl-D)
IDEFICS_APT_PACKAGES+=" libmicrohttpd-dev curl jq chromium"  # idefics serve (tools/server): HTTP library; its tests use curl, jq and headless Chromium
