/*
 * Crop and concatenate, forward and backward: the U-Net's skip connection.
 *
 * The contracting path's feature map `skip` [N, Cs, Hs, Ws] is larger than the expanding
 * path's `up` [N, Cu, H, W] (unpadded convolutions shrink every map), so the centre
 * H x W window of skip is cut out and the two are stacked on channels, skip first (as in
 * the paper's figure):
 *
 *     y[n, c, i, j] = skip[n, c, i + oy, j + ox]     for c <  Cs
 *                   = up[n, c - Cs, i, j]            for c >= Cs
 *     with (oy, ox) = ((Hs - H) / 2, (Ws - W) / 2); the host refuses odd or negative margins.
 *
 * The backward splits dy the same way: dup is dy's last Cu channels; dskip is dy's first
 * Cs channels placed back in the centre window, with zeros in the cropped-off border.
 * The border gets its zeros from the kernel (each dskip element is written exactly once,
 * inside or outside the window), so the host needs no memset.
 *
 * Work mapping: pure data movement, one output element per thread over a 1-D grid of
 * 256-thread blocks (CROP_CONCAT_CU.threads in cunet/ops/crop_concat.py; rounded up,
 * bounds-checked). Each kernel splits its
 * flat index into (n, c, i, j) with div/mod; that costs a few integer instructions, which
 * a memory-bound copy hides. Consecutive threads take consecutive j, so every warp reads
 * and writes contiguous runs (the cropped read starts mid-row, which costs at most one
 * extra 32-byte sector per row). The branch on c < Cs diverges only in the one block that
 * straddles the skip/up boundary of each image.
 *
 * Memory traffic per element: forward 4 B read + 4 B written; backward the same for dup
 * and for the window of dskip, and 4 B written (nothing read) for dskip's border.
 */

KERNEL void crop_concat_forward(GLOBAL const float* RESTRICT skip, GLOBAL const float* RESTRICT up,
                                GLOBAL float* RESTRICT y, int N, int Cs, int Hs, int Ws, int Cu, int H, int W)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    int C = Cs + Cu;
    if (o < N * C * H * W) {
        int j = o % W, i = (o / W) % H, c = (o / (W * H)) % C, n = o / (W * H * C);
        int oy = (Hs - H) / 2, ox = (Ws - W) / 2;
        y[o] = c < Cs ? skip[((n * Cs + c) * Hs + i + oy) * Ws + j + ox]
                      : up[((n * Cu + c - Cs) * H + i) * W + j];
    }
}

/* One thread per dskip element: the matching dy element inside the centre window, else 0. */
KERNEL void crop_concat_backward_skip(GLOBAL const float* RESTRICT dy, GLOBAL float* RESTRICT dskip,
                                      int N, int Cs, int Hs, int Ws, int Cu, int H, int W)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o < N * Cs * Hs * Ws) {
        int jj = o % Ws, ii = (o / Ws) % Hs, c = (o / (Ws * Hs)) % Cs, n = o / (Ws * Hs * Cs);
        int i = ii - (Hs - H) / 2, j = jj - (Ws - W) / 2;  /* position inside the window */
        int inside = i >= 0 && i < H && j >= 0 && j < W;
        dskip[o] = inside ? dy[((n * (Cs + Cu) + c) * H + i) * W + j] : 0.0f;
    }
}

/* One thread per dup element: a copy of dy's channel Cs + c. */
KERNEL void crop_concat_backward_up(GLOBAL const float* RESTRICT dy, GLOBAL float* RESTRICT dup,
                                    int N, int Cs, int Cu, int H, int W)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o < N * Cu * H * W) {
        int plane = H * W, p = o % plane, c = (o / plane) % Cu, n = o / (plane * Cu);
        dup[o] = dy[(n * (Cs + Cu) + Cs + c) * plane + p];
    }
}
