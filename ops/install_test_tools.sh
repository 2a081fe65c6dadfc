#!/usr/bin/env bash
# Install the Debian tools the tests drive: promtool (`prometheus`) and amtool (`prometheus-alertmanager`) for
# the config checks in tests/ops/test_prometheus.py, `chromium` for the portal's browser tests (Playwright
# drives it; nothing is downloaded at run time) and `xmlsec1` for SAML signatures. Idempotent and quiet: does
# nothing when all are on PATH.
# The packages' services are never started: a policy-rc.d that refuses every start is put in place for the
# install (unless one exists already) and removed afterwards; any prometheus/alertmanager process that
# the install left running anyway is stopped by its pid. Debian bookworm, as root (or with sudo).
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-liberation)
command -v xmlsec1 >/dev/null 2>&1 || need+=(xmlsec1)
[ "${#need[@]}" -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
policy=/usr/sbin/policy-rc.d
created=0
cleanup() {
    if [ "$created" = 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# ops/install_test_tools.sh: start no service while installing\nexit 101\n' \
        | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    created=1
fi

# pids of running prometheus / alertmanager servers (by executable: comm is cut at 15 characters)
servers() {
    local exe
    for exe in /proc/[0-9]*/exe; do
        case "$(readlink "$exe" 2>/dev/null)" in
            /usr/bin/prometheus | /usr/bin/prometheus-alertmanager) exe=${exe#/proc/}; echo "${exe%/exe}" ;;
        esac
    done
}
before=$(servers | tr "\n" " ")
log=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
    >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"

# Whatever the install started (a unit, an init script) does not outlive it.
for pid in $(servers); do
    case " $before " in
        *" $pid "*) ;;  # running before we came: not ours
        *) "${sudo[@]}" kill "$pid" 2>/dev/null || true ;;
    esac
done
command -v promtool >/dev/null && command -v amtool >/dev/null && command -v chromium >/dev/null \
    && command -v xmlsec1 >/dev/null
