"""Reference solutions of lab 06 (approxdrop.course.exercises.lab06)."""

import torch


def kept_residues(dp, offset, keep):
    return torch.sort(torch.remainder(offset + torch.arange(keep), dp)).values  # no loop: all the residues at once


def kept_index(j, dp, offset, keep):
    residues = kept_residues(dp, offset, keep)
    return (j // keep) * dp + int(residues[j % keep])
