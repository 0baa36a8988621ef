#!/usr/bin/env bash
# Installs herd on Raspberry Pi OS or Debian as a system service:
#   Node.js 20+ (from apt when its nodejs is new enough, else NodeSource's Node 20 repository),
#   herd in /opt/herd (npm ci --omit=dev; native kernels built when a compiler is present),
#   /usr/local/bin/herd, a `herd` system user, /var/lib/herd, /etc/herd/herd.env,
#   the cluster key /etc/herd/cluster.key (owner herd, mode 0400: readable only by that user),
#   and the systemd units herd-node.service and/or herd-serve.service.
#
# usage: sudo deploy/install.sh [options]
#   --role node|serve|both   which unit to enable and start (default: node)
#   --key-file FILE          use this cluster key (every machine of a herd needs the same one);
#                            default: keep /etc/herd/cluster.key, or make a new random one
#   --model FILE             copy this GGUF model to /var/lib/herd/models/model.gguf (serve)
#   --api-key-file FILE      API key for herd serve (default: keep, or make a new random one)
#   --no-start               install and enable, but do not start the units now
#   --dry-run                change nothing on this system: files go under --root (default a new
#                            temporary directory), and every command that would change the
#                            system is printed as "would run: …" instead of run
#   --root DIR               with --dry-run: the directory standing in for /
#
# Run it again to update: it keeps the keys and /etc/herd/herd.env, and replaces herd itself.
#
# It runs as root on a machine where the `herd` user may be hostile (a compromised daemon), so
# it never writes, chmods or chowns through a path that user controls: /var/lib/herd and its
# models directory belong to root (only /var/lib/herd/cache is herd's), files are written to a
# new name in a root-owned directory and renamed into place (install -T, mv -T: a symbolic link
# in the way is replaced, never followed), ownership changes use chown -h, and a directory the
# installer needs that is a symbolic link stops it.

set -euo pipefail

ROLE=node
KEY_FILE=
MODEL=
API_KEY_FILE=
START=1
DRY_RUN=0
ROOT=
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "herd install: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --role) ROLE=${2:?--role needs node, serve or both}; shift 2 ;;
    --key-file) KEY_FILE=${2:?--key-file needs a file}; shift 2 ;;
    --model) MODEL=${2:?--model needs a file}; shift 2 ;;
    --api-key-file) API_KEY_FILE=${2:?--api-key-file needs a file}; shift 2 ;;
    --no-start) START=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

case "$ROLE" in node|serve|both) ;; *) die "--role must be node, serve or both, got $ROLE" ;; esac
[ -z "$KEY_FILE" ] || [ -r "$KEY_FILE" ] || die "cannot read the key file $KEY_FILE"
[ -z "$MODEL" ] || [ -r "$MODEL" ] || die "cannot read the model $MODEL"
[ -z "$API_KEY_FILE" ] || [ -r "$API_KEY_FILE" ] || die "cannot read the API key file $API_KEY_FILE"
[ -f "$SRC/package.json" ] && [ -f "$SRC/bin/herd.js" ] || die "run me from a herd checkout (no package.json and bin/herd.js in $SRC)"

if [ "$DRY_RUN" = 1 ]; then
  ROOT=${ROOT:-$(mktemp -d -t herd-root.XXXXXX)}
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || die "--dry-run needs a --root other than /"
  say "dry run into $ROOT: nothing outside it changes"
else
  [ -z "$ROOT" ] || die "--root works only with --dry-run"
  [ "$(id -u)" = 0 ] || die "run as root (sudo $0 …), or try --dry-run"
fi

# Runs a command that changes the system, or prints it in a dry run.
run() {
  if [ "$DRY_RUN" = 1 ]; then echo "would run: $*"; else "$@"; fi
}
# A path on the target system.
at() { echo "$ROOT$1"; }
# Stops at a symbolic link where the installer needs a real directory.
no_link() {
  [ ! -L "$(at "$1")" ] || die "refusing to use $1: it is a symbolic link (left by whom? check it, remove it, run me again)"
}
# A directory on the target with this mode, not a symbolic link; created when missing.
dir() {
  no_link "$1"
  install -d -m "$2" "$(at "$1")"
  no_link "$1"
}
# Installs file $2 as $1 on the target (mode $3): written under a new name in the same
# (root-owned) directory, then renamed over whatever is there, a symbolic link included.
place() {
  local dst
  dst=$(at "$1")
  no_link "$(dirname "$1")"
  rm -f "$dst.herd-new"
  install -T -m "$3" "$2" "$dst.herd-new"
  mv -fT "$dst.herd-new" "$dst"
}
# Writes stdin to a file on the target (mode $2), unless it exists and $3 is "keep".
put() {
  local dst
  dst=$(at "$1")
  if [ "${3:-}" = keep ] && [ -e "$dst" ] && [ ! -L "$dst" ]; then cat >/dev/null; say "kept $1"; return; fi
  mkdir -p "$(dirname "$dst")"
  local tmp
  tmp=$(umask 077 && mktemp "$dst.XXXXXX")
  cat >"$tmp"
  place "$1" "$tmp" "$2"
  rm -f "$tmp"
  say "wrote $1"
}
random_key() { head -c 32 /dev/urandom | base64 | tr -d '\n=+/' | cut -c1-40; echo; }

# --- the system -------------------------------------------------------------------------
if [ -r /etc/os-release ]; then
  . /etc/os-release
  case "${ID:-} ${ID_LIKE:-}" in *debian*|*raspbian*) ;; *) say "warning: this script knows Debian and Raspberry Pi OS, not ${PRETTY_NAME:-this system}" ;; esac
fi

node_major() { command -v node >/dev/null 2>&1 && node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

if [ "$(node_major)" -ge 20 ]; then
  say "Node.js $(node --version) is new enough"
else
  say "Node.js 20 or newer is missing: installing it"
  candidate=$(apt-cache policy nodejs 2>/dev/null | sed -n 's/^ *Candidate: *\([0-9]*\).*/\1/p' | head -1)
  if [ "${candidate:-0}" -ge 20 ] 2>/dev/null; then
    run apt-get install -y nodejs npm
  else
    # Debian 12 and Raspberry Pi OS 12 ship Node 18: take Node 20 from NodeSource's repository.
    run apt-get update
    run apt-get install -y ca-certificates curl gnupg
    run install -d -m 0755 /etc/apt/keyrings
    if [ "$DRY_RUN" = 1 ]; then
      echo "would run: curl -fsSL https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key | gpg --dearmor -o /etc/apt/keyrings/nodesource.gpg"
    else
      curl -fsSL https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key | gpg --dearmor --yes -o /etc/apt/keyrings/nodesource.gpg
    fi
    echo "deb [signed-by=/etc/apt/keyrings/nodesource.gpg] https://deb.nodesource.com/node_20.x nodistro main" | put /etc/apt/sources.list.d/nodesource.list 0644
    run apt-get update
    run apt-get install -y nodejs
  fi
fi
# A compiler lets npm build the native kernels (faster than wasm); herd works without one.
if ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  run apt-get install -y build-essential python3 || say "no compiler: herd will use its wasm kernels"
fi

# --- the herd user and directories ------------------------------------------------------
if id herd >/dev/null 2>&1; then
  say "user herd exists"
else
  run useradd --system --home-dir /var/lib/herd --no-create-home --shell /usr/sbin/nologin --user-group herd
fi
# /var/lib/herd and its models are root's (group herd reads them); the cache is herd's own.
# Earlier versions gave herd all of /var/lib/herd: take it back first, then nothing below it
# can move under the installer's feet.
mkdir -p "$(at /var/lib)"
for d in /var/lib/herd /var/lib/herd/models; do
  dir "$d" 0750
  run chown -h root:herd "$d"
done
dir /var/lib/herd/cache 0750
run chown -h herd:herd /var/lib/herd/cache
dir /etc/herd 0755

# --- herd itself ------------------------------------------------------------------------
APP=$(at /opt/herd)
mkdir -p "$APP"
say "copying herd from $SRC to /opt/herd"
# Only what runs: no tests, caches, build products or installed packages.
no_link /opt/herd
rm -rf "$APP/src" "$APP/bin"
(cd "$SRC" && tar -cf - package.json package-lock.json bin src proto models deploy README.md \
  $(ls -d binding.gyp scripts tsconfig.json 2>/dev/null)) | (cd "$APP" && tar -xf -)
if [ "$DRY_RUN" = 1 ]; then
  echo "would run: (cd /opt/herd && npm ci --omit=dev)"
else
  (cd /opt/herd && npm ci --omit=dev --no-audit --no-fund)
  # npm has been seen to exit 0 after every fetch failed ("Exit handler never called!").
  [ -f /opt/herd/node_modules/.package-lock.json ] || die "npm ci left no node_modules in /opt/herd: see npm's output above"
fi
NODE_BIN=$(command -v node || echo /usr/bin/node)
put /usr/local/bin/herd 0755 <<EOF
#!/bin/sh
# herd, installed by deploy/install.sh
exec $NODE_BIN /opt/herd/bin/herd.js "\$@"
EOF

# --- keys and settings ------------------------------------------------------------------
KEY=$(at /etc/herd/cluster.key)
if [ -n "$KEY_FILE" ]; then
  tr -d '\n' <"$KEY_FILE" | put /etc/herd/cluster.key 0400
elif [ -e "$KEY" ]; then
  say "kept /etc/herd/cluster.key"
else
  random_key | put /etc/herd/cluster.key 0400
  say "made a new cluster key: copy /etc/herd/cluster.key to every machine of this herd (install.sh --key-file)"
fi
run chown -h herd:herd /etc/herd/cluster.key

if [ "$ROLE" != node ]; then
  if [ -n "$API_KEY_FILE" ]; then
    tr -d '\n' <"$API_KEY_FILE" | put /etc/herd/api.key 0400
  elif [ ! -e "$(at /etc/herd/api.key)" ]; then
    random_key | put /etc/herd/api.key 0400
    say "made an API key in /etc/herd/api.key: clients send it as HERD_API_KEY / Authorization: Bearer"
  fi
  run chown -h herd:herd /etc/herd/api.key
  if [ -n "$MODEL" ]; then
    place /var/lib/herd/models/model.gguf "$MODEL" 0640
    run chown -h root:herd /var/lib/herd/models/model.gguf
    say "copied the model to /var/lib/herd/models/model.gguf"
  fi
fi

put /etc/herd/herd.env 0644 keep <<'EOF'
# Settings of the herd services (read by herd-node.service and herd-serve.service).
# After a change: sudo systemctl restart herd-node (or herd-serve).

# herd node: add --interface wlan0 to pin mDNS to one network, --name to rename the node.
HERD_NODE_ARGS=

# herd serve: the model, where to listen, which nodes to use.
HERD_MODEL=/var/lib/herd/models/model.gguf
HERD_SERVE_ARGS=--host 0.0.0.0 --port 8080 --nodes auto --api-key-file /etc/herd/api.key
EOF

# --- units ------------------------------------------------------------------------------
units=()
case "$ROLE" in node) units=(herd-node) ;; serve) units=(herd-serve) ;; both) units=(herd-node herd-serve) ;; esac
for u in "${units[@]}"; do
  put "/etc/systemd/system/$u.service" 0644 <"$SRC/deploy/systemd/$u.service"
done
if [ -d /run/systemd/system ] || [ "$DRY_RUN" = 1 ]; then
  run systemctl daemon-reload
  for u in "${units[@]}"; do
    if [ "$START" = 1 ]; then run systemctl enable --now "$u.service"; else run systemctl enable "$u.service"; fi
  done
else
  # An image being built, or a chroot: no systemd to talk to; enabling is a symlink.
  run mkdir -p /etc/systemd/system/multi-user.target.wants
  for u in "${units[@]}"; do
    run ln -sfn "/etc/systemd/system/$u.service" "/etc/systemd/system/multi-user.target.wants/$u.service"
  done
  START=0
  say "systemd is not running here: ${units[*]} enabled for the next boot, not started"
fi

say "done: ${units[*]} installed$([ "$START" = 1 ] && echo ' and started')"
[ "$DRY_RUN" = 1 ] && say "dry run: see $ROOT"
exit 0
