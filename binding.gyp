# herd's native kernels (src/kernels/native), built at install time by
# scripts/build-native.mjs for the CPU it is built on (-march=native), and by
# scripts/prebuild.mjs for the npm package at fixed CPU levels (x86-64-v3, armv8-a …),
# which src/kernels/native/prebuilt.ts matches against the CPU before loading one.
# herd_march overrides the target, e.g. for the arm64 cross-build in scripts/test-arm.sh:
#   node-gyp rebuild -- -Dherd_march=armv8.2-a+dotprod
# herd_cflags adds flags (space-separated) the -march level lacks, e.g. scripts/prebuild.mjs's
# portable AVX-512 build: -Dherd_march=x86-64-v4 "-Dherd_cflags=-mavx512vnni -mavx512vbmi -mtune=generic".
{
  "variables": {
    "herd_march%": "native",
    "herd_cflags%": ""
  },
  "targets": [
    {
      "target_name": "herd_native",
      "sources": [
        "src/kernels/native/addon.c",
        "src/kernels/native/pool.c",
        "src/kernels/native/table.c",
        "src/kernels/native/activation.c",
        "src/kernels/native/dot_float.c",
        "src/kernels/native/dot_q.c",
        "src/kernels/native/dot_k.c",
        "src/kernels/native/ops.c"
      ],
      "defines": ["NAPI_VERSION=8"],
      # -ffp-contract=off: the activation quantizers must round each product as the js
      # reference does (see activation.c); the kernels fuse where they mean to, by intrinsics.
      "cflags": ["-O3", "-march=<(herd_march)", "<@(herd_cflags)", "-ffp-contract=off", "-std=gnu11", "-pthread"],
      "cflags!": ["-O2"],
      # gcc 12's -march=native on Sapphire Rapids also tunes for it, which made the Q4_K
      # AVX-512 matvec 2.7x slower than the same code tuned generically (the prebuilds' tuning).
      "conditions": [["target_arch=='x64'", { "cflags": ["-mtune=generic"] }]],
      "ldflags": ["-pthread"],
      "xcode_settings": {
        "OTHER_CFLAGS": ["-O3", "-march=<(herd_march)", "-ffp-contract=off", "-std=gnu11"]
      }
    }
  ]
}
