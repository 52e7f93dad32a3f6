// The reference text's example as a JavaScript job, as examples/hello is in Rust: create a
// 4 GiB image `myimage` and write 'foo' * 200 at offset 0.
//
//   scripts/build-js.sh examples/js/hello.js target/js/hello.wasm
//   rbd-wasm run target/js/hello.wasm -- [POOL [IMAGE]]
import { openPool, job as jobOf } from '../../js/sdk/rbd-wasm.js';

export const job = jobOf((args) => {
  const poolName = args[0] ?? 'rbd';
  const imageName = args[1] ?? 'myimage';
  const pool = openPool(poolName);
  const size = 4n * 1024n ** 3n; // 4 GiB
  pool.create(imageName, size);
  const image = pool.open(imageName);
  try {
    const data = 'foo'.repeat(200);
    const written = image.write(0, data);
    console.log(`created ${poolName}/${imageName} (${size} bytes) and wrote ${written} bytes at offset 0`);
  } finally {
    image.close();
  }
});
