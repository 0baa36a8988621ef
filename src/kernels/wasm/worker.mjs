// A wasm backend worker thread (plain JavaScript: worker_threads cannot load .ts through
// tsx on Node 20). It instantiates the kernels module on the backend's shared memory, then
// loops: wait for the job generation in the control block to move, and take part in that
// job (the wasm run() claims chunks of work until none is left and counts them done). No
// postMessage per job: starting one costs an atomic load here.
//
// workerData: { module: WebAssembly.Module, memory: WebAssembly.Memory (shared),
//               ctl: byte address of the control block, part: this worker's number,
//               spinMicros: how long to poll the generation before sleeping in Atomics.wait,
//               errors: MessagePort the main thread reads synchronously when a job fails }

import { parentPort, workerData } from 'node:worker_threads';

const { module, memory, ctl, part, spinMicros, errors } = workerData;
const spinMs = spinMicros / 1000;
const ex = new WebAssembly.Instance(module, { env: { memory } }).exports;
const word = (name) => ex[name].value / 4;
const GEN = word('CTL_GEN');
const DONE = word('CTL_DONE');
const ERROR = word('CTL_ERROR');
const OP = word('CTL_OP');
const STOP = ex.OP_STOP.value;
// The control block sits low in memory and is never moved, so this view stays valid while
// the memory grows (growing a shared memory never detaches its old buffers).
const c = new Int32Array(memory.buffer, ctl, ex.CTL_BYTES.value / 4);

// Read the generation before saying ready: a job started after this read is then seen as a
// change, whereas reading it after 'ready' could swallow the first job and hang the caller.
let seen = Atomics.load(c, GEN);
parentPort.postMessage('ready');

for (;;) {
  // Poll for a while first: the next product of a token follows within tens of
  // microseconds, while waking from Atomics.wait costs about as much again, and a worker
  // that arrives late finds the chunks taken (or, worse, takes the last one late).
  let g = Atomics.load(c, GEN);
  if (g === seen) {
    const until = performance.now() + spinMs;
    do {
      for (let i = 0; i < 256 && g === seen; i++) g = Atomics.load(c, GEN);
    } while (g === seen && performance.now() < until);
  }
  while (g === seen) {
    Atomics.wait(c, GEN, seen);
    g = Atomics.load(c, GEN);
  }
  seen = g;
  if (c[OP] === STOP) break;
  try {
    ex.run(ctl, g);
  } catch (err) {
    // The chunk this worker held is never counted done: flag the failure and wake the
    // main thread, which waits on the done count.
    errors.postMessage(`worker ${part}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    Atomics.store(c, ERROR, 1);
    Atomics.notify(c, DONE);
  }
}
errors.close();
