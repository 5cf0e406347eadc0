"""Reference solutions of lab 07's exercises (tests/test_exercises_lm.py proves they pass)."""

import torch


def masked_projection(u, weight, bias, pattern):
    # one mask over the units, the same for every time step and sample: [n] broadcasts over [T, B, n]
    mask = pattern.keep_mask(u.shape[-1], u.device).to(u.dtype)
    return torch.nn.functional.linear(u * mask * pattern.scale, weight, bias)


def gemm_work_left(hidden, layers, vocab, p):
    gates = 4 * hidden
    inputs = layers * gates * hidden  # input projections (embedding as wide as the LSTM): shrink to 1 - p
    recurrent = layers * gates * hidden  # h_t-1 is never dropped: stays
    decoder = vocab * hidden  # reads the last site: shrinks to 1 - p
    return ((inputs + decoder) * (1 - p) + recurrent) / (inputs + recurrent + decoder)
