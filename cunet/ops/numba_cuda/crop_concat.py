"""Crop and concatenate as Numba CUDA kernels: one thread per output element, the grid of
kernels/crop_concat.cu, on 4-D arrays (sizes read off their shapes). The centre crop
starts at ((Hs - H) // 2, (Ws - W) // 2); the op code has checked both margins even.
"""
from numba import cuda, float32


@cuda.jit
def crop_concat_forward(skip, up, y):
    """y[n, c] = skip's centre window for c < Cs, else up[n, c - Cs]."""
    N, C, H, W = y.shape
    Cs = skip.shape[1]
    o = cuda.grid(1)
    if o < N * C * H * W:
        n, c, i, j = o // (C * H * W), (o // (H * W)) % C, (o // W) % H, o % W
        if c < Cs:
            y[n, c, i, j] = skip[n, c, i + (skip.shape[2] - H) // 2, j + (skip.shape[3] - W) // 2]
        else:
            y[n, c, i, j] = up[n, c - Cs, i, j]


@cuda.jit
def crop_concat_backward_skip(dy, dskip):
    """dskip = dy's first Cs channels inside the centre window, 0 in the border."""
    N, Cs, Hs, Ws = dskip.shape
    H, W = dy.shape[2], dy.shape[3]
    o = cuda.grid(1)
    if o < N * Cs * Hs * Ws:
        n, c, ii, jj = o // (Cs * Hs * Ws), (o // (Hs * Ws)) % Cs, (o // Ws) % Hs, o % Ws
        i, j = ii - (Hs - H) // 2, jj - (Ws - W) // 2
        if 0 <= i < H and 0 <= j < W:
            dskip[n, c, ii, jj] = dy[n, c, i, j]
        else:
            dskip[n, c, ii, jj] = 0


@cuda.jit
def crop_concat_backward_up(dy, dup):
    """dup = dy's last Cu channels."""
    N, Cu, H, W = dup.shape
    Cs = dy.shape[1] - Cu
    o = cuda.grid(1)
    if o < N * Cu * H * W:
        n, c, i, j = o // (Cu * H * W), (o // (H * W)) % Cu, (o // W) % H, o % W
        dup[n, c, i, j] = dy[n, Cs + c, i, j]


_ARRAY4 = float32[:, :, :, ::1]
PTX_SIGNATURES = {
    crop_concat_forward: (_ARRAY4, _ARRAY4, _ARRAY4),
    crop_concat_backward_skip: (_ARRAY4, _ARRAY4),
    crop_concat_backward_up: (_ARRAY4, _ARRAY4),
}
