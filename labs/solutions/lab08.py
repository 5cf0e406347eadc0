"""Reference solution of lab 08's exercise (tests/test_exercises_lab08.py proves it passes)."""

from torch import nn

from approxdrop.course.exercises.lab08 import is_elementwise


def is_linear(m):
    # an nn.Linear whose class keeps nn.Linear's forward: the block computes the GEMM itself
    return isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward


def find_chains(seq):
    mods = list(seq)
    starts = []
    for i in range(len(mods) - 3):
        fc1, act, drop, fc2 = mods[i : i + 4]
        if starts and i <= starts[-1] + 3:
            continue  # this Linear is the last one of the chain just found: a Linear is in one block
        dropout = type(drop) is nn.Dropout and drop.p < 1  # p = 1 drops every unit: no block
        if is_linear(fc1) and is_elementwise(act) and dropout and is_linear(fc2):
            if fc1.out_features == fc2.in_features:
                starts.append(i)
    return starts
