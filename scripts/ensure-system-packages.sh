#!/usr/bin/env bash
# Installs the Debian packages the tests, the demo and the firmware build need, when they are missing:
# Mosquitto (the broker and its command-line clients), a CJK font, Chromium, Xvfb and xdotool. Exits non-zero with a clear message otherwise.
set -euo pipefail

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have mosquitto || missing+=(mosquitto)
have mosquitto_sub || missing+=(mosquitto-clients)
# A CJK font for the device's glyphs (make firmware renders them from it).
[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || missing+=(fonts-wqy-zenhei)
# Headless Chromium for the citizen's rating page tests (driven by Playwright, never its own download).
have chromium || missing+=(chromium)
# A virtual screen for the simulator's Tk window in tests and on headless machines.
have Xvfb || missing+=(xvfb)
have xdotool || missing+=(xdotool)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "Installing system packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "error: ${missing[*]} not installed, and this user cannot install packages." >&2
    echo "       Install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: ${missing[*]} not installed and no apt-get here; install them with your package manager." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Debian's package would start a system-wide broker on port 1883; we run private ones, so tell
# invoke-rc.d not to start services during this install (unless a policy is already in place).
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    "${sudo[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d' && made_policy=1
fi
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
    echo "error: could not install ${missing[*]} with apt-get (see above)." >&2
    exit 1
fi
[ "$made_policy" -eq 1 ] && "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
have mosquitto || { echo "error: mosquitto still missing after install" >&2; exit 1; }
exit 0
