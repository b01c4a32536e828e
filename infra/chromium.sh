#!/usr/bin/env bash
# Headless Chromium and Playwright for the browser tests (the console page).
#
#   infra/chromium.sh install   Debian's chromium (apt-get, root) and
#                               Playwright from PyPI in a venv; idempotent
#   infra/chromium.sh python    install if missing, print the venv's python
#   infra/chromium.sh path      print the browser's path
#
# Playwright drives the system browser (executable_path): its own browser
# download (`playwright install`) cannot reach its servers here and is
# never used.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$ADPIPE_CACHE_DIR/playwright-venv"
REQUIREMENTS="playwright==1.65.2 pytest==9.2.0"
BROWSER=/usr/bin/chromium

install() {
  if [ ! -x "$BROWSER" ]; then
    [ "$(id -u)" = 0 ] || die "Chromium is not installed; as root run: apt-get install chromium"
    command -v apt-get >/dev/null || die "apt-get not found: install Debian's chromium package"
    log "installing Chromium from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >&2 \
      || die "apt-get install chromium failed"
  fi
  ensure_venv playwright "$VENV" "$REQUIREMENTS"
}

case "${1:-}" in
  install) install ;;
  python) install; echo "$VENV/bin/python" ;;
  path) echo "$BROWSER" ;;
  *) die "usage: $0 install|python|path" ;;
esac
