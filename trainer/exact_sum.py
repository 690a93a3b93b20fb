"""The exact, order-free sum of float32 block sums (README: The math, "Bit for bit").

In float32 a different split of the batch over workers changes the order of the
additions, and so the weights. Here the batch's examples are cut into blocks that do
not depend on the worker count (trainer/batches.py), each block's Eq. 12 sums are
computed the same way wherever it runs (workers/shard.py), and the block sums are
combined EXACTLY, so that no order, grouping or placement of the additions can show:

- every tensor t (each layer's W and b) has a power-of-two scale 2^s[t];
- a block's float32 sums are multiplied by it (exact: a power of two) and truncated to
  integers (np.trunc: no ties, so nothing depends on what else is added);
- the integers are added in float64, which is exact in ANY order while every value
  stays below 2^53: each block's integers are kept below 2^(53 - ceil(log2 blocks)).

The coordinator multiplies the total by 2^-s, divides by the batch's m and rounds once
to float32. The scale follows the gradients: each worker reports, per tensor, the
largest |block sum| it saw (a max, so order-free too), and a step whose largest value
falls outside [2^LOW, 2^HIGH) at its scale is recomputed with the scale that puts it
at 2^TARGET; every worker count takes the same decision, from the same maxima. The
scales are training state: checkpoints carry them (Position.sum_scales).
"""

from __future__ import annotations

import math

import numpy as np

from trainer.batches import EXACT_AUTO_MIN_EXAMPLES
from trainer.network import ROWS_MIN_INPUTS, NetworkSpec

DEFAULT_SCALE = 0  # the first step's exponent; its maxima set the real one (a recomputed step)
CLAMP = 120  # exponents stay inside float32's range: 2^s is a normal float32
HEADROOM_BITS = 8  # growth of a tensor's largest block sum tolerated without a recompute
SLACK_BITS = 16  # ... and shrinkage (the largest values then still have 26+ bits)


def exact_by_default(spec: NetworkSpec, batch_size: int, blocks: int) -> bool:
    """train.exact_sums "auto": float32, a step's blocks of EXACT_AUTO_MIN_EXAMPLES or more
    on average, and a network that keeps examples as rows anyway (trainer/network.py: the
    blocks always do; a thin network as columns runs 1.2-1.3x faster than as rows, which
    the exact sums would give away)."""
    return (spec.dtype == "float32" and batch_size >= EXACT_AUTO_MIN_EXAMPLES * blocks
            and spec.layers[0] >= ROWS_MIN_INPUTS)


def tensor_sizes(layers) -> list[int]:
    """Sizes of the tensors in theta's order: W1, b1, W2, b2, ..."""
    sizes = []
    for n_in, n_out in zip(layers[:-1], layers[1:]):
        sizes += [n_out * n_in, n_out]
    return sizes


def tensor_offsets(layers) -> np.ndarray:
    """Where each tensor starts in theta (for np.maximum.reduceat)."""
    return np.concatenate([[0], np.cumsum(tensor_sizes(layers))[:-1]]).astype(np.intp)


def integer_bits(blocks: int) -> int:
    """Largest |integer| per block is below 2^this, so that `blocks` of them add exactly in float64."""
    return 53 - max(math.ceil(math.log2(blocks)), 0)


class ExactSum:
    """The coordinator's side: the scales, the decision to recompute, and the mean gradient."""

    def __init__(self, layers, blocks: int, scales=None):
        self.sizes = tensor_sizes(layers)
        self.high = integer_bits(blocks)
        self.target = self.high - HEADROOM_BITS
        self.low = self.target - SLACK_BITS
        self.measured = scales is not None  # False: the first step recomputes at its measured scale
        self.scales = (np.full(len(self.sizes), DEFAULT_SCALE, np.int64) if scales is None
                       else np.asarray(scales, np.int64).copy())
        self.recomputed = 0  # steps computed twice (a scale moved); a figure for tests and notes
        self._factor_key: tuple | None = None
        self._factor = np.empty(0)  # 2^-s / n per parameter, for _factor_key's scales and n

    def wanted(self, block_max: np.ndarray) -> np.ndarray:
        """The scales that put each tensor's largest |block sum| at 2^target (a tensor
        whose block sums are all 0 keeps its scale)."""
        _, e = np.frexp(block_max)  # block_max < 2^e
        want = np.clip(self.target - e, -CLAMP, CLAMP)
        return np.where(block_max > 0, want, self.scales).astype(np.int64)

    def rescale(self, block_max: np.ndarray) -> bool:
        """After a step at self.scales with these maxima (finite): True if the step must
        be computed again, at the scales now in self.scales."""
        want = self.wanted(block_max)
        _, e = np.frexp(block_max)
        top = e + self.scales  # each tensor's largest integer is below 2^top
        over = (block_max > 0) & (top > self.high)
        under = (block_max > 0) & (top < self.low)
        # A scale clamped at float32's range cannot move further: such a tensor is kept.
        moved = want != self.scales
        redo = bool(((over | under) & moved).any()) or (not self.measured and bool(moved.any()))
        if bool(over.any()) and not redo:
            raise OverflowError("block sums too large for an exact sum at any float32 scale")
        self.measured = True
        if redo:
            self.scales = want
            self.recomputed += 1
        return redo

    def mean(self, total: np.ndarray, n: int, out: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
        """out (float32) <- total * 2^-s / n, tensor by tensor: the product in float64
        (into `scratch`, which may be `total`), then rounded once to float32."""
        key = (tuple(self.scales), n)
        if key != self._factor_key:
            per_tensor = np.ldexp(1.0, -self.scales) / n
            self._factor_key, self._factor = key, np.repeat(per_tensor, self.sizes)
        if scratch is None:
            np.multiply(total, self._factor, out=out, casting="same_kind")
            return out
        np.multiply(total, self._factor, out=scratch)  # pure float64: faster than a mixed-type ufunc
        np.copyto(out, scratch, casting="same_kind")
        return out


class BlockScaler:
    """The worker's side: a block's float32 sums -> integers at the given scales, in place,
    and each tensor's largest |block sum| before scaling."""

    def __init__(self, layers):
        self.sizes = tensor_sizes(layers)
        self.offsets = tensor_offsets(layers)
        self._key, self._vector = None, None

    def vector(self, scales) -> np.ndarray:
        key = tuple(int(s) for s in scales)
        if key != self._key:
            self._key = key
            self._vector = np.repeat(np.ldexp(np.float32(1), np.asarray(key, np.int32)).astype(np.float32),
                                     self.sizes)
        return self._vector

    def to_integers(self, rows: np.ndarray, scale_vector: np.ndarray) -> np.ndarray:
        """rows (float32, (q, theta's size): q blocks' sums) <- trunc(rows * 2^s), in place;
        returns each block's per-tensor max |sum| before scaling, (q, tensors) float64.
        Two reductions (max and min) read the rows without a temporary."""
        top = np.maximum.reduceat(rows, self.offsets, axis=1)
        bottom = np.minimum.reduceat(rows, self.offsets, axis=1)
        block_max = np.maximum(top, -bottom).astype(np.float64)
        np.multiply(rows, scale_vector, out=rows)
        np.trunc(rows, out=rows)
        return block_max
