#!/bin/sh
# Run by `make run` before the app starts. Qt's xcb platform plugin (PySide6 6.11) links system libraries that
# a fresh Debian/Ubuntu desktop may lack (libxcb-cursor0, libxcb-icccm4 and libxcb-keysyms1 most often); without
# them Qt aborts with "Could not load the Qt platform plugin "xcb"", which does not say what to install. This
# says exactly that, or installs them when run as root. Other systems, and Qt platforms other than xcb
# (QT_QPA_PLATFORM=offscreen, as the tests use), are left alone.
set -eu

case "${QT_QPA_PLATFORM:-xcb}" in
  *xcb*) ;;
  *) exit 0 ;;
esac
command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 || exit 0

# The packages providing what libqxcb.so, libQt6XcbQpa, libQt6Gui/Core/DBus/Widgets and the xcb GL
# integrations link against (`readelf -d`), less libc, libstdc++, libgcc and zlib, which every system has.
# Qt 6 no longer uses libxcb-xinerama0. "a|b": either package will do (Ubuntu 24.04 and Debian 13 renamed
# glib's package for the 64-bit time_t transition).
NEEDED="libxcb1 libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
libxcb-render0 libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0
libxcb-xkb1 libx11-6 libx11-xcb1 libxkbcommon0 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libfreetype6
libglib2.0-0t64|libglib2.0-0 libdbus-1-3"

installed() {
  # `dpkg -s` also knows removed packages whose config files remain, so the status line is what counts.
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

# Of several alternatives none of which is installed, the first this system's package lists have.
installable() {
  for pkg in $(printf '%s' "$1" | tr '|' ' '); do
    if apt-cache show "$pkg" >/dev/null 2>&1; then
      echo "$pkg"
      return
    fi
  done
  echo "${1%%|*}"
}

missing=""
for want in $NEEDED; do
  found=""
  for pkg in $(printf '%s' "$want" | tr '|' ' '); do
    if installed "$pkg"; then
      found=yes
      break
    fi
  done
  if [ -z "$found" ]; then
    case "$want" in
      *"|"*) missing="$missing $(installable "$want")" ;;
      *) missing="$missing $want" ;;
    esac
  fi
done

[ -n "$missing" ] || exit 0

if [ "$(id -u)" = 0 ]; then
  echo "Installing the system libraries Qt needs to show a window:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  apt-get install -y -qq $missing
  exit 0
fi

cat >&2 <<EOF
ClinicSync's window needs system libraries this machine does not have:$missing

Install them with:

    sudo apt-get install$missing

and run \`make run\` again (as root, \`make run\` installs them itself).
EOF
exit 1
