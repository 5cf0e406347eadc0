"""Reference solutions of lab 05's exercises (tests/test_exercises_training.py proves they pass)."""

import torch


def gemm_share(measured_speedup, ideal_speedup):
    # 1 / measured = (1 - f) + f / ideal, solved for f
    return (1 - 1 / measured_speedup) / (1 - 1 / ideal_speedup)


def train_step(model, optimizer, x, y):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()
