#!/usr/bin/env bash
# Prints the directory holding qemu-user 10 (qemu-aarch64, qemu-arm: static binaries) from
# Debian's bookworm-backports, fetched once into .cache/qemu-user/.
#
# Why not bookworm's qemu-user-static (7.2): its setsockopt() has no IP_MULTICAST_IF
# (ENOPROTOOPT), which @homebridge/ciao sets on every mDNS socket, so an emulated herd node
# could never be found over mDNS. 10.0 has it. The package is only downloaded and unpacked
# (apt-get download with a private apt state, dpkg -x): the machine's apt sources and
# installed packages stay as they are.
#
#   dir=$(bash scripts/qemu-user.sh) && "$dir/qemu-aarch64" -L /usr/aarch64-linux-gnu NODE …

set -euo pipefail
cd "$(dirname "$0")/.."
cache=$PWD/.cache/qemu-user
bin=$cache/bin
if [ -x "$bin/qemu-aarch64" ] && [ -x "$bin/qemu-arm" ]; then
  echo "$bin"
  exit 0
fi
apt=$cache/apt
rm -rf "$apt" "$cache/root" "$bin"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main' >"$apt/sources.list"
opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
echo "qemu-user.sh: fetching qemu-user from bookworm-backports (about 60 MB)" >&2
apt-get "${opts[@]}" update -qq >&2
(cd "$apt" && apt-get "${opts[@]}" download -qq qemu-user/bookworm-backports >&2)
dpkg -x "$apt"/qemu-user_*.deb "$cache/root"
# Only the two a Raspberry Pi needs (the package has every architecture: ~360 MB).
mkdir -p "$bin"
mv "$cache/root/usr/bin/qemu-aarch64" "$cache/root/usr/bin/qemu-arm" "$bin/" || true
rm -rf "$apt" "$cache/root"
[ -x "$bin/qemu-aarch64" ] && [ -x "$bin/qemu-arm" ] || { echo "qemu-user.sh: no qemu-aarch64/qemu-arm in the package" >&2; exit 1; }
echo "$bin"
