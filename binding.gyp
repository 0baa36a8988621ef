# herd's native kernels (src/kernels/native), built at install time by
# scripts/build-native.mjs. The addon is compiled for the CPU it is built on
# (-march=native): build it on each machine, never ship one built elsewhere.
# herd_march overrides the target, e.g. for the arm64 cross-build in scripts/test-arm.sh:
#   node-gyp rebuild -- -Dherd_march=armv8.2-a+dotprod
{
  "variables": {
    "herd_march%": "native"
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
      "cflags": ["-O3", "-march=<(herd_march)", "-ffp-contract=off", "-std=gnu11", "-pthread"],
      "cflags!": ["-O2"],
      "ldflags": ["-pthread"],
      "xcode_settings": {
        "OTHER_CFLAGS": ["-O3", "-march=<(herd_march)", "-ffp-contract=off", "-std=gnu11"]
      }
    }
  ]
}
