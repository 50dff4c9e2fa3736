#!/bin/sh
# Installs a built ClinicSync (the dist/clinicsync/ folder `make package` makes) for the current user: the folder
# as PREFIX/lib/clinicsync, the `clinicsync` command in PREFIX/bin, the icon, and the application menu entry.
#
#   packaging/install-linux.sh [BUILT_FOLDER]   # default: dist/clinicsync of this checkout
#   packaging/install-linux.sh --uninstall
#
# PREFIX defaults to ~/.local; PREFIX=/usr/local (as root) installs for every user.
set -eu

prefix=${PREFIX:-$HOME/.local}
app_dir=$prefix/lib/clinicsync
command=$prefix/bin/clinicsync
icon=$prefix/share/icons/hicolor/scalable/apps/clinicsync.svg
entry=$prefix/share/applications/clinicsync.desktop

refresh_icon_cache() {
	# Desktops watch these folders. An icon cache is refreshed only where one exists: GTK trusts a stale cache
	# over the folder, so creating one here would hide icons other programs install later.
	if [ -f "$prefix/share/icons/hicolor/icon-theme.cache" ] && command -v gtk-update-icon-cache >/dev/null; then
		gtk-update-icon-cache -q -t "$prefix/share/icons/hicolor" || true
	fi
}

if [ "${1:-}" = "--uninstall" ]; then
	rm -rf "$app_dir"
	rm -f "$command" "$icon" "$entry"
	refresh_icon_cache
	echo "Removed ClinicSync from $prefix (its settings, data and keyring entries are kept)."
	exit 0
fi

built=${1:-$(dirname "$0")/../dist/clinicsync}
if [ ! -x "$built/clinicsync" ] || [ ! -d "$built/_internal/resources" ]; then
	echo "No ClinicSync build in $built; run \`make package\` first, or pass the built folder." >&2
	exit 2
fi
case $prefix in *[\"\`\$\\]*)
	echo "PREFIX must not contain \" \` \$ or \\ (it goes into the .desktop file's Exec line)." >&2
	exit 2
	;;
esac

mkdir -p "$prefix/lib" "$prefix/bin" "$(dirname "$icon")" "$(dirname "$entry")"
rm -rf "$app_dir.new"
cp -R "$built" "$app_dir.new"
rm -rf "$app_dir"
mv "$app_dir.new" "$app_dir"
ln -sf "$app_dir/clinicsync" "$command"
cp "$app_dir/_internal/resources/app.svg" "$icon"
# The absolute path: a desktop session's PATH need not include PREFIX/bin.
sed "s|^Exec=clinicsync\$|Exec=\"$command\"|" "$app_dir/_internal/resources/clinicsync.desktop" >"$entry"
refresh_icon_cache
echo "Installed ClinicSync in $app_dir; run \`clinicsync\` (from $prefix/bin) or pick it from the applications menu."
