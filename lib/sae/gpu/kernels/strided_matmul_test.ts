import * as tf from "@tensorflow/tfjs";
import {
  assertClose,
  gpuTest,
  randomRows,
  readF32,
  runKernel,
  upload,
  values,
} from "../testdata/harness.ts";
import { stridedMatmulKernel } from "./strided_matmul.ts";

gpuTest(
  "strided matmul kernel equals tf.matMul on transposed, offset views, writing and adding",
  async (g) => {
    const [rows, cols, inner] = [37, 300, 11];
    // A stored transposed after 5 leading values, B row-major after 3, C inside a wider matrix.
    const at = randomRows(5 + inner * rows, 1, 1), b = randomRows(3 + inner * cols, 1, 2);
    const aT = tf.tensor2d(at.subarray(5), [inner, rows]);
    const bm = tf.tensor2d(b.subarray(3), [inner, cols]);
    const want = await values(tf.matMul(aT, bm, true, false));
    for (const accumulate of [false, true]) {
      const kernel = await stridedMatmulKernel(g.device, "test", {
        rows,
        cols,
        inner,
        a: { offset: 5, rowStride: 1, colStride: rows },
        b: { offset: 3, rowStride: cols, colStride: 1 },
        c: { offset: 2, rowStride: cols + 4, colStride: 1 },
        accumulate,
      });
      const c = upload(g, new Float32Array(2 + rows * (cols + 4)).fill(1));
      await runKernel(g, kernel, [upload(g, at), upload(g, b), c], rows * cols);
      const got = await readF32(g, c, 2 + rows * (cols + 4));
      const block = new Float32Array(rows * cols);
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          block[i * cols + j] = got[2 + i * (cols + 4) + j]! -
            (accumulate ? 1 : 0);
        }
      }
      assertClose(block, want, `C${accumulate ? " (accumulated)" : ""}`);
    }
    tf.dispose([aT, bm]);
  },
);
