#!/usr/bin/env bash
# Set up a virtual environment for bitnet-actor and run it, its tests or its linters.
#
#   bash ops/dev.sh serve [serve flags...]   set up, then `bitnet-actor serve` with embedded defaults
#   bash ops/dev.sh test [pytest args...]    set up with the test extras, then run the test suite
#   bash ops/dev.sh lint                     ruff format --check, ruff check, flake8-async, mypy
#   bash ops/dev.sh setup [extras]           only set up (extras: comma list, default "test,dev")
#
# The venv lives in $BITNET_VENV (default .venv beside this repository).  Re-running is cheap: pip skips what
# is installed and the Cython build only recompiles a changed .pyx.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${BITNET_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

say() { printf '[dev.sh] %s\n' "$*" >&2; }

setup() {
    local extras="${1:-}"
    if [ ! -x "$PY" ]; then
        say "creating virtual environment in $VENV"
        python3 -m venv "$VENV"
    fi
    # A new venv has setuptools 65, which cannot build PEP 660 editable installs: upgrade first.  The build
    # runs without isolation so it uses the Cython and numpy installed here.
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" "setuptools>=77" wheel \
        "Cython>=3.0" "numpy>=1.26"
    if [[ ",$extras," == *",test,"* ]] && ! "$PY" -c "import torch" 2>/dev/null; then
        # The oracle tests need torch; 2.13.0 is a CPU wheel. Installed first and alone, so no other
        # requirement can pull a CUDA build.
        say "installing torch==2.13.0 (CPU) for the tests"
        "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
    fi
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    say "installing bitnet-actor${extras:+ with [$extras]}"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation -e "$spec"
    # Editable installs do not rebuild extensions when a .pyx changes: build in place (a no-op when current).
    "$PY" setup.py --quiet build_ext --inplace >/dev/null
    if [[ ",$extras," == *",test,"* ]]; then
        opencl_cpu
        ops_tools
    fi
}

# Debian's promtool and amtool (alert-rule and config tests of tests/ops), chromium (the portal's browser
# tests) and xmlsec1 (SAML); their tests skip without them unless BITNET_TEST_REQUIRE_OPS_TOOLS=1 (CI), which
# makes them fail instead.
ops_tools() {
    if ! bash "$ROOT/ops/install_test_tools.sh"; then
        say "could not install promtool/amtool/chromium/xmlsec1: their tests will skip (or fail under CI)"
    fi
}

# The CPU OpenCL driver the OpenCL tests run on: PoCL built by ops/pocl.sh (BITNET_POCL=skip: none, and
# those tests skip saying so).  pocl-binary-distribution, which earlier versions installed, cannot build a
# kernel on CPUs newer than its LLVM: it goes, or every OpenCL test would also run on a broken platform.
opencl_cpu() {
    if "$PY" -m pip show -q pocl-binary-distribution >/dev/null 2>&1; then
        say "removing pocl-binary-distribution (replaced by the PoCL that ops/pocl.sh builds)"
        "$PY" -m pip uninstall --quiet -y pocl-binary-distribution
    fi
    if [ "${BITNET_POCL:-}" = "skip" ]; then
        say "BITNET_POCL=skip: no CPU OpenCL driver; the OpenCL tests run only on drivers already installed"
        return 0
    fi
    bash "$ROOT/ops/pocl.sh" install
    local vendors
    vendors="$(bash "$ROOT/ops/pocl.sh" env)"
    if [ -n "$vendors" ]; then
        export "${vendors?}"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    serve)
        setup ""
        exec "$VENV/bin/bitnet-actor" serve "$@"
        ;;
    test)
        setup "test,dev"
        exec "$PY" -m pytest "$@"
        ;;
    lint)
        setup "test,dev"
        "$VENV/bin/ruff" format --check .
        "$VENV/bin/ruff" check .
        # The trio rules ruff lacks: cleanup awaits must be shielded everywhere (ASYNC102); actors also keep
        # their checkpoint guarantees (ASYNC91x). Quart handlers are framework callbacks, so not there.
        "$VENV/bin/flake8-async" --enable=ASYNC102,ASYNC900 $(git ls-files -co --exclude-standard 'bitnet_actor/*.py' 'actors/*.py' 'portal/*.py')
        "$VENV/bin/flake8-async" --enable=ASYNC910,ASYNC911 $(git ls-files -co --exclude-standard 'actors/*.py')
        "$VENV/bin/mypy"
        ;;
    setup)
        setup "${1-test,dev}"
        ;;
    *)
        sed -n '2,10p' "$0" >&2
        exit 2
        ;;
esac
