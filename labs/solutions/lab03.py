"""Reference solutions of lab 03 (approxdrop.course.exercises.lab03)."""

import torch


def tile_mask(n_out, n_in, dp, offset, tile, keep):
    a = torch.arange(-(-n_out // tile))[:, None]  # tile rows
    b = torch.arange(-(-n_in // tile))[None, :]  # tile columns
    return (b - a - offset) % dp < keep


def weight_mask(n_out, n_in, dp, offset, tile, keep):
    tiles = tile_mask(n_out, n_in, dp, offset, tile, keep)
    i = torch.arange(n_out)[:, None] // tile
    j = torch.arange(n_in)[None, :] // tile
    return tiles[i, j]
