#!/usr/bin/env bash
# Build and register PoCL, the CPU OpenCL driver the tests run the OpenCL kernels on.
#
#   bash ops/pocl.sh install    build PoCL (once, cached) and register it with the OpenCL ICD loader
#   bash ops/pocl.sh env        print the OCL_ICD_VENDORS setting to use when it could not be registered
#   bash ops/pocl.sh target     print the CPU name PoCL's kernel compiler is built for on this machine
#
# Why a build of our own: the prebuilt CPU drivers reachable here (PyPI's pocl-binary-distribution 3.0 with
# LLVM 14, Debian bookworm's pocl-opencl-icd 3.1 with LLVM 15) ask LLVM for the host CPU's name, get "generic"
# on CPUs newer than their LLVM (AMD Zen 4 and later), and then fail every kernel build with "unknown target
# CPU 'generic'".  PoCL 3.1 has no run-time override for that name (POCL_LLVM_CPU_NAME arrived in 5.0), but
# its build takes one: LLC_HOST_CPU.  So this builds Debian's PoCL source (pocl-source) against Debian's
# LLVM 15 with the kernel compiler pinned to the x86-64 psABI level this CPU supports (x86-64-v4 with
# AVX-512, x86-64-v3 with AVX2), a name every LLVM since 12 knows.
#
# The build (about two minutes on two cores) lives in $BITNET_POCL_PREFIX (default
# ~/.cache/bitnet-actor/pocl-3.1-llvm15-<level>) and is reused while it exists.  Registration writes
# /etc/OpenCL/vendors/bitnet-actor-pocl.icd when that directory is writable (root); otherwise `env` prints
# the OCL_ICD_VENDORS value that makes the ICD loader see it (and ops/dev.sh test exports it).
# Build dependencies come from Debian's packages (apt-get, as root); elsewhere install the ones named below.
set -euo pipefail

POCL_VERSION=3.1
LLVM_VERSION=15
DEBS=(pocl-source "llvm-$LLVM_VERSION-dev" "clang-$LLVM_VERSION" "libclang-$LLVM_VERSION-dev"
      "libclang-cpp$LLVM_VERSION-dev" cmake ninja-build pkg-config ocl-icd-dev ocl-icd-opencl-dev libhwloc-dev
      xz-utils)
ICD_DIR=/etc/OpenCL/vendors
ICD_NAME=bitnet-actor-pocl.icd

say() { printf '[pocl.sh] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The highest x86-64 psABI level whose every feature /proc/cpuinfo lists.
target() {
    local flags
    flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has() { local f; for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
    if has avx512f avx512bw avx512cd avx512dq avx512vl avx2 fma bmi2 movbe; then
        echo x86-64-v4
    elif has avx2 avx fma bmi1 bmi2 f16c movbe; then
        echo x86-64-v3
    elif has sse4_2 ssse3 popcnt cx16; then
        echo x86-64-v2
    else
        echo x86-64
    fi
}

prefix() {
    echo "${BITNET_POCL_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/bitnet-actor/pocl-$POCL_VERSION-llvm$LLVM_VERSION-$(target)}"
}

install_debs() {
    local missing=() p
    for p in "${DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        die "PoCL's build needs these Debian packages: ${missing[*]} (install them, or set BITNET_POCL=skip to run without OpenCL tests)"
    fi
    say "installing build dependencies: ${missing[*]}"
    # A fresh machine has no package lists yet; an old list may name versions the mirror no longer has.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
    local dest src log
    dest="$(prefix)"
    install_debs   # also where a cached build exists: it links against these packages' libraries
    if [ -f "$dest/.built" ]; then
        return 0
    fi
    src="$(mktemp -d)"
    log="$src/build.log"
    say "building PoCL $POCL_VERSION with LLVM $LLVM_VERSION for $(target) into $dest (about two minutes)"
    tar -xJf /usr/src/pocl.tar.xz -C "$src"
    [ -f "$src/pocl/CMakeLists.txt" ] || die "pocl-source did not unpack to pocl/ in $src"
    rm -rf "$dest"
    # Position-independent code: the runtime links static helper libraries into a shared object.  Only the
    # host CPU drivers (basic, pthread); no tests, examples or SPIR-V (the kernels are OpenCL C).
    # From inside the scratch dir: PoCL's configure checks write their compile tests to the working directory.
    if ! (cd "$src" && cmake -S "$src/pocl" -B "$src/build" -G Ninja \
            -DCMAKE_BUILD_TYPE=Release -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
            -DCMAKE_INSTALL_PREFIX="$dest" \
            -DWITH_LLVM_CONFIG="/usr/bin/llvm-config-$LLVM_VERSION" \
            -DLLC_HOST_CPU="$(target)" \
            -DENABLE_ICD=ON -DPOCL_ICD_ABSOLUTE_PATH=ON \
            -DENABLE_TESTS=OFF -DENABLE_EXAMPLES=OFF -DENABLE_POCLCC=OFF \
            -DENABLE_SPIR=OFF -DENABLE_SPIRV=OFF \
          && ninja -C "$src/build" -j "$(nproc)" install) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "PoCL build failed (log above; whole log in $log)"
    fi
    [ -f "$dest/etc/OpenCL/vendors/pocl.icd" ] || die "PoCL installed no ICD file under $dest"
    touch "$dest/.built"
    rm -rf "$src"
}

register() {
    local dest icd
    dest="$(prefix)"
    icd="$dest/etc/OpenCL/vendors/pocl.icd"
    if mkdir -p "$ICD_DIR" 2>/dev/null && [ -w "$ICD_DIR" ]; then
        if ! cmp -s "$icd" "$ICD_DIR/$ICD_NAME"; then
            cp "$icd" "$ICD_DIR/$ICD_NAME"
            say "registered $(cat "$icd") in $ICD_DIR/$ICD_NAME"
        fi
    else
        say "cannot write $ICD_DIR: use OCL_ICD_VENDORS=$dest/etc/OpenCL/vendors (ops/dev.sh test sets it)"
    fi
}

cmd="${1:-}"
case "$cmd" in
    install)
        build
        register
        ;;
    env)
        if [ -f "$ICD_DIR/$ICD_NAME" ] && cmp -s "$(prefix)/etc/OpenCL/vendors/pocl.icd" "$ICD_DIR/$ICD_NAME"; then
            exit 0   # registered system-wide: nothing to set
        fi
        echo "OCL_ICD_VENDORS=$(prefix)/etc/OpenCL/vendors"
        ;;
    target)
        target
        ;;
    *)
        sed -n '2,6p' "$0" >&2
        exit 2
        ;;
esac
