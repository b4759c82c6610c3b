#!/usr/bin/env bash
# System packages some tests drive for real: Debian's headless chromium (tests/local/test_browser.py) and
# docker.io (the docker provider's tests start a private dockerd). Installed only when missing, as root, on
# Debian; elsewhere those tests are skipped with the reason printed.
set -uo pipefail
[ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1 || exit 0
want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
command -v dockerd >/dev/null 2>&1 || want+=(docker.io)
[ ${#want[@]} -eq 0 ] && exit 0
echo "system-deps: installing ${want[*]} (apt)" >&2
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null \
  || echo "system-deps: could not install ${want[*]}; the tests that need them will be skipped" >&2
exit 0
