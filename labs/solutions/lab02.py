"""Reference solutions of lab 02 (approxdrop.course.exercises.lab02)."""

import torch


def kept_indices(n, dp, offset, keep):
    i = torch.arange(n)
    return i[(i - offset) % dp < keep]


def compact_forward(x_kept, weight, bias, in_pattern, out_pattern):
    n_out, n_in = weight.shape
    rows = kept_indices(n_out, out_pattern.dp, out_pattern.offset, out_pattern.keep)
    cols = kept_indices(n_in, in_pattern.dp, in_pattern.offset, in_pattern.keep)
    w_kept = weight[rows][:, cols]  # [k_out, k_in]
    return in_pattern.scale * x_kept @ w_kept.T + bias[rows]  # [B, k_out]


def grouped_offsets(dp, groups, generator):
    runs = [torch.randperm(dp, generator=generator) for _ in range(-(-groups // dp))]  # ceil(groups / dp) permutations
    return torch.cat(runs)[:groups]  # [groups]
