# tools/lib/setup.sh - sourced by tools/run-demo and tools/run-tests.
# Installs what a fresh Debian/Ubuntu machine lacks, then configures and builds.

idefics_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Debian packages the build and the tests need.
IDEFICS_APT_PACKAGES="meson ninja-build gcc clang pkg-config libzstd-dev libxxhash-dev libstb-dev libjpeg62-turbo-dev \
libcjson-dev ocl-icd-opencl-dev opencl-headers ocl-icd-libopencl1 pocl-opencl-icd libclblast-dev clinfo zstd \
openjdk-17-jdk-headless"
# openjdk-17-jdk-headless: javac/java and jni.h for libidefics_jni.so and its test (tests/test_jni.sh).
# tools/run-cross-tests adds its own: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user dpkg-dev.

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
IDEFICS_APT_PACKAGES+=" libmicrohttpd-dev curl jq chromium"  # idefics serve (tools/server): HTTP library; its tests use curl, jq and headless Chromium
