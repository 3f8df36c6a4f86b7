"""Winograd F(2x2, 3x3): a 3x3 convolution with 2.25x fewer multiplies, on BLAS.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). A 2x2 block of
outputs of a 3x3 valid correlation reads a 4x4 block d of the input; with the filter g,

    Y (2x2) = A^T [ (G g G^T)  *  (B^T d B) ] A          (* : elementwise, 16 products)

where B^T (4x4), G (4x3) and A^T (2x4) hold only 0, +-1 and 1/2 (defined below). Direct,
the block costs 4 * 9 = 36 multiply-adds per (input channel, filter); here 16, once the
transforms are done. And the sum over input channels commutes with A^T [.] A, so

    M[e, k, t] = sum_c U[e, k, c] * V[e, c, t]       for each of the 16 elements e

is 16 independent GEMMs [K, C] x [C, tiles]: the filter transform U = G g G^T is computed
once per call (K*C small 4x4 matrices), the input transform V = B^T d B once per 4x4 input
block ("tile", stride 2), and the output transform A^T M A once per output tile. For C and
K in the hundreds the GEMMs hold most of the arithmetic; the transforms are additions,
bound by memory traffic (the transformed tiles are 4x the input), which is why the C++
direct kernels (cunet/cpu/conv2d.py) beat it on the U-Net's forwards and backward inputs
at every width on the 2-core VMs; it keeps the weight gradients the direct kernel runs
slowly (rows of 56 outputs or fewer with C*K >= 128 x 128), and the wide layers of a cunet
built without the C++ module.

The two backwards are the same machinery:

    input:   dx = the same correlation of dy zero-padded by 2, with the filter turned by
             180 degrees and its C and K swapped (:func:`winograd_input_grad`; the C++
             direct kernels do the same);
    params:  Y is linear in g, so dL/dg = G^T [ sum over tiles of (A dY A^T) * V ] G:
             16 GEMMs [K, tiles] x [tiles, C] over the same V, then G^T (.) G per (k, c).

Output sizes need not be even: an odd OH or OW gets a last tile row or column half outside
the output, computed on a zero-padded input and dropped. The work goes a chunk of tile rows
at a time (:func:`tile_rows_per_chunk`), so the transformed tiles, 4x the input, never
exist whole and stay in cache between transform and GEMM.

Rounding: the transforms add up to 4 values per stage and U has factors of 1/2, so the
error is a few times the direct sum's (Lavin and Gray; tests/test_conv2d.py bounds it by
the same analysis run on |values|). float32 and float64 both work.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# The transforms, for the reader: the Numba loops below write each one out by hand, from
# these matrices (tests/test_conv2d.py checks the results against naive loops).
B_T = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1.0, 0.0, 0.0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0.0, 0.0, 1.0]])
A_T = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], dtype=np.float64)

# Elements of one chunk's transformed input plus its GEMM output (V and M: 16 (C + K)
# per tile); 2^22 float32 = 16 MB, well inside a server's last-level cache (105 MB here).
# But at least WINOGRAD_MIN_TILES tiles per chunk: each BLAS call reads all of its
# element's U (K C values) and the deep layers have few tiles per row. (2^20 .. 2^23 and
# 256 .. 1024 were tried on five wide layers; the timings on this 2-core VM varied more
# between repeats than between settings, so these are middle values, not a tuned optimum.)
WINOGRAD_CHUNK_ELEMENTS = 1 << 22
WINOGRAD_MIN_TILES = 512


def tile_rows_per_chunk(C: int, K: int, tiles_per_row: int, tile_rows: int) -> int:
    """Tile rows per chunk: 16 (C + K) values per tile within WINOGRAD_CHUNK_ELEMENTS, at
    least WINOGRAD_MIN_TILES tiles, at most every row."""
    by_budget = WINOGRAD_CHUNK_ELEMENTS // (16 * (C + K) * tiles_per_row)
    by_minimum = -(-WINOGRAD_MIN_TILES // tiles_per_row)
    return max(1, min(tile_rows, max(by_budget, by_minimum)))


@njit(cache=True)
def _times_G(a, b, c):
    """G [a, b, c]^T for three rows (or columns) of a 3x3 matrix: four values."""
    return a, (a + b + c) * 0.5, (a - b + c) * 0.5, c


@njit(cache=True)
def _times_G_T(a, b, c, d):
    """G^T [a, b, c, d]^T for four rows (or columns) of a 4x4 matrix: three values."""
    return a + (b + c) * 0.5, (b - c) * 0.5, (b + c) * 0.5 + d


@njit(parallel=True, cache=True)
def _filter_tiles(w, U):
    """U[4u + v, k, c] = (G w[k, c] G^T)[u, v] for every filter k and channel c."""
    K, C = w.shape[0], w.shape[1]
    for k in prange(K):
        for c in range(C):
            g = w[k, c]
            # G g: 4 rows of 3, one column at a time
            t00, t10, t20, t30 = _times_G(g[0, 0], g[1, 0], g[2, 0])
            t01, t11, t21, t31 = _times_G(g[0, 1], g[1, 1], g[2, 1])
            t02, t12, t22, t32 = _times_G(g[0, 2], g[1, 2], g[2, 2])
            # (G g) G^T: each row of 3 becomes 4
            U[0, k, c], U[1, k, c], U[2, k, c], U[3, k, c] = _times_G(t00, t01, t02)
            U[4, k, c], U[5, k, c], U[6, k, c], U[7, k, c] = _times_G(t10, t11, t12)
            U[8, k, c], U[9, k, c], U[10, k, c], U[11, k, c] = _times_G(t20, t21, t22)
            U[12, k, c], U[13, k, c], U[14, k, c], U[15, k, c] = _times_G(t30, t31, t32)


@njit(parallel=True, cache=True)
def _filter_gradient_tiles(X, dw):
    """dw[k, c] = G^T X[:, k, c] G, X[4u + v, k, c] being a 4x4 matrix per (k, c)."""
    K, C = dw.shape[0], dw.shape[1]
    for k in prange(K):
        for c in range(C):
            x = X[:, k, c]
            # G^T X: 3 rows of 4, one column at a time
            s00, s10, s20 = _times_G_T(x[0], x[4], x[8], x[12])
            s01, s11, s21 = _times_G_T(x[1], x[5], x[9], x[13])
            s02, s12, s22 = _times_G_T(x[2], x[6], x[10], x[14])
            s03, s13, s23 = _times_G_T(x[3], x[7], x[11], x[15])
            # (G^T X) G: each row of 4 becomes 3
            dw[k, c, 0, 0], dw[k, c, 0, 1], dw[k, c, 0, 2] = _times_G_T(s00, s01, s02, s03)
            dw[k, c, 1, 0], dw[k, c, 1, 1], dw[k, c, 1, 2] = _times_G_T(s10, s11, s12, s13)
            dw[k, c, 2, 0], dw[k, c, 2, 1], dw[k, c, 2, 2] = _times_G_T(s20, s21, s22, s23)


def filter_transform(w: np.ndarray) -> np.ndarray:
    """U[4u + v, k, c] = (G w[k, c] G^T)[u, v]: [K, C, 3, 3] -> [16, K, C]."""
    U = np.empty((16,) + w.shape[:2], w.dtype)
    _filter_tiles(w, U)
    return U


def filter_gradient(X: np.ndarray) -> np.ndarray:
    """dw[k, c] = G^T X[:, k, c] G (X: [16, K, C], element 4u + v) -> [K, C, 3, 3]."""
    dw = np.empty(X.shape[1:] + (3, 3), X.dtype)
    _filter_gradient_tiles(X, dw)
    return dw


def _pad_to_tiles(x: np.ndarray, OH: int, OW: int) -> np.ndarray:
    """x, zero-padded at the bottom and right to cover whole 2x2 output tiles (a copy only
    when OH or OW is odd: never in the U-Net, whose sizes are all even)."""
    extra_h, extra_w = OH % 2, OW % 2
    if not (extra_h or extra_w):
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)))


@njit(parallel=True, cache=True)
def _input_tiles(x_img, tile_row0, tile_rows, tiles_per_row, V):
    """V[e, c, t] = (B^T d B)[e // 4, e % 4] for the 4x4 input blocks d of tile rows
    tile_row0 .. + tile_rows (t = row * tiles_per_row + column; block (i, j) starts at
    x_img[c, 2i, 2j]). One channel per task."""
    C = x_img.shape[0]
    for c in prange(C):
        for i in range(tile_rows):
            h = 2 * (tile_row0 + i)
            r0, r1, r2, r3 = x_img[c, h], x_img[c, h + 1], x_img[c, h + 2], x_img[c, h + 3]
            for j in range(tiles_per_row):
                t, w = i * tiles_per_row + j, 2 * j
                # rows of B^T d: d0 - d2, d1 + d2, d2 - d1, d1 - d3 (4 values each)
                a0, a1, a2, a3 = r0[w] - r2[w], r0[w + 1] - r2[w + 1], r0[w + 2] - r2[w + 2], r0[w + 3] - r2[w + 3]
                b0, b1, b2, b3 = r1[w] + r2[w], r1[w + 1] + r2[w + 1], r1[w + 2] + r2[w + 2], r1[w + 3] + r2[w + 3]
                c0, c1, c2, c3 = r2[w] - r1[w], r2[w + 1] - r1[w + 1], r2[w + 2] - r1[w + 2], r2[w + 3] - r1[w + 3]
                d0, d1, d2, d3 = r1[w] - r3[w], r1[w + 1] - r3[w + 1], r1[w + 2] - r3[w + 2], r1[w + 3] - r3[w + 3]
                # then (.) B on each row: v0 - v2, v1 + v2, v2 - v1, v1 - v3
                V[0, c, t], V[1, c, t], V[2, c, t], V[3, c, t] = a0 - a2, a1 + a2, a2 - a1, a1 - a3
                V[4, c, t], V[5, c, t], V[6, c, t], V[7, c, t] = b0 - b2, b1 + b2, b2 - b1, b1 - b3
                V[8, c, t], V[9, c, t], V[10, c, t], V[11, c, t] = c0 - c2, c1 + c2, c2 - c1, c1 - c3
                V[12, c, t], V[13, c, t], V[14, c, t], V[15, c, t] = d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(parallel=True, cache=True)
def _output_tiles(M, b, relu, tile_row0, tile_rows, tiles_per_row, y_img):
    """y_img[k, 2i + u, 2j + v] = (A^T M[:, k, t] A)[u, v] + b[k], then ReLU if relu, for
    the tiles of this chunk; outputs past y_img's edge (odd sizes) are not written."""
    K, OH, OW = y_img.shape
    for k in prange(K):
        bias = b[k]
        for i in range(tile_rows):
            h = 2 * (tile_row0 + i)
            for j in range(tiles_per_row):
                t, w = i * tiles_per_row + j, 2 * j
                m = M[:, k, t]
                # A^T m: row 0 = m0 + m1 + m2, row 1 = m1 - m2 - m3 (rows of 4); then (.) A
                s0, s1, s2, s3 = m[0] + m[4] + m[8], m[1] + m[5] + m[9], m[2] + m[6] + m[10], m[3] + m[7] + m[11]
                z0, z1, z2, z3 = m[4] - m[8] - m[12], m[5] - m[9] - m[13], m[6] - m[10] - m[14], m[7] - m[11] - m[15]
                out = ((s0 + s1 + s2, s1 - s2 - s3), (z0 + z1 + z2, z1 - z2 - z3))
                for u in range(2):
                    if h + u < OH:
                        for v in range(2):
                            if w + v < OW:
                                value = out[u][v] + bias
                                y_img[k, h + u, w + v] = (value if value > 0 else 0) if relu else value   # NaN -> 0


@njit(parallel=True, cache=True)
def _gradient_tiles(dy_img, tile_row0, tile_rows, tiles_per_row, D):
    """D[e, k, t] = (A e A^T)[e // 4, e % 4] for the 2x2 blocks e of dy (zero past its edge),
    A = (A^T)^T: a 2x2 block (p, q; r, s) becomes rows p, p + r, p - r, -r of 4 columns
    each built the same way from two values: (a, b) -> a, a + b, a - b, -b."""
    K, OH, OW = dy_img.shape
    zero = dy_img.dtype.type(0)
    for k in prange(K):
        for i in range(tile_rows):
            h = 2 * (tile_row0 + i)
            for j in range(tiles_per_row):
                t, w = i * tiles_per_row + j, 2 * j
                p = dy_img[k, h, w]
                q = dy_img[k, h, w + 1] if w + 1 < OW else zero
                r = dy_img[k, h + 1, w] if h + 1 < OH else zero
                s = dy_img[k, h + 1, w + 1] if h + 1 < OH and w + 1 < OW else zero
                rows = ((p, q), (p + r, q + s), (p - r, q - s), (-r, -s))
                for u in range(4):
                    a, bb = rows[u]
                    D[4 * u, k, t], D[4 * u + 1, k, t], D[4 * u + 2, k, t], D[4 * u + 3, k, t] = a, a + bb, a - bb, -bb


def _transformed_chunks(x: np.ndarray, K: int, OH: int, OW: int):
    """Yield (n, tile_row0, tile_rows, tiles_per_row, V, out) per chunk of tile rows of each
    image: V [16, C, tiles] holds the chunk's transformed input (B^T d B), out [16, K, tiles]
    is a buffer for the caller's GEMM. Both buffers are reused: use them before the next.
    ``x`` must already cover whole tiles (:func:`_pad_to_tiles`)."""
    N, C = x.shape[:2]
    tile_rows, tiles_per_row = -(-OH // 2), -(-OW // 2)
    rows = tile_rows_per_chunk(C, K, tiles_per_row, tile_rows)
    V_buffer = np.empty(16 * C * rows * tiles_per_row, x.dtype)
    out_buffer = np.empty(16 * K * rows * tiles_per_row, x.dtype)
    for n in range(N):
        for row0 in range(0, tile_rows, rows):
            count = min(rows, tile_rows - row0)
            tiles = count * tiles_per_row
            V = V_buffer[:16 * C * tiles].reshape(16, C, tiles)
            _input_tiles(x[n], row0, count, tiles_per_row, V)
            yield n, row0, count, tiles_per_row, V, out_buffer[:16 * K * tiles].reshape(16, K, tiles)


def winograd_correlate(x: np.ndarray, w: np.ndarray, b: np.ndarray, relu: bool = False) -> np.ndarray:
    """Valid 3x3 cross-correlation [N, C, H, W] * [K, C, 3, 3] -> [N, K, H-2, W-2], plus b, ReLU if relu."""
    N, C, H, W = x.shape
    K = w.shape[0]
    OH, OW = H - 2, W - 2
    U = filter_transform(w)
    y = np.empty((N, K, OH, OW), x.dtype)
    for n, row0, count, tiles_per_row, V, M in _transformed_chunks(_pad_to_tiles(x, OH, OW), K, OH, OW):
        np.matmul(U, V, out=M)                                # 16 GEMMs [K, C] x [C, tiles]
        _output_tiles(M, b, relu, row0, count, tiles_per_row, y[n])
    return y


@njit(parallel=True, cache=True)
def _pad2(dy, out):
    """out[N, K, OH+4, OW+4] = dy with a border of 2 zeros (the backward input's padding)."""
    N, K, OH, OW = dy.shape
    for plane in prange(N * K):
        n, k = plane // K, plane % K
        out[n, k, :2] = 0
        out[n, k, OH + 2:] = 0
        for i in range(OH):
            row = out[n, k, i + 2]
            row[:2] = 0
            row[2:OW + 2] = dy[n, k, i]
            row[OW + 2:] = 0


def winograd_input_grad(dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """dx [N, C, OH+2, OW+2] of a valid 3x3 correlation with w [K, C, 3, 3] that gave dy [N, K, OH, OW].

    Output pixel y[oh, ow] read x[oh + r, ow + s] with weight w[r, s], so x[h, w] receives
    dy[h - r, w - s] * w[r, s]: the correlation of dy, zero-padded by 2, with each filter
    turned by 180 degrees and C and K swapped.
    """
    N, K, OH, OW = dy.shape
    padded = np.empty((N, K, OH + 4, OW + 4), dy.dtype)
    _pad2(dy, padded)   # on Numba's threads, like the transforms that follow
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    return winograd_correlate(padded, flipped, np.zeros(w.shape[1], dy.dtype))


def winograd_weight_grad(x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dw [K, C, 3, 3], db [K]) of a valid 3x3 correlation of x [N, C, H, W] that gave dy."""
    N, C = x.shape[:2]
    K, OH, OW = dy.shape[1:]
    total, product = np.zeros((16, K, C), x.dtype), np.empty((16, K, C), x.dtype)
    for n, row0, count, tiles_per_row, V, D in _transformed_chunks(_pad_to_tiles(x, OH, OW), K, OH, OW):
        _gradient_tiles(dy[n], row0, count, tiles_per_row, D)
        np.matmul(D, V.transpose(0, 2, 1), out=product)       # 16 GEMMs [K, tiles] x [tiles, C]
        total += product                                      # chunks always summed in this order
    db = dy.reshape(N, K, OH * OW).sum(axis=2).sum(axis=0)
    return filter_gradient(total), db
