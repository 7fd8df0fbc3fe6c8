"""Hardware premium and discount (SPEC section 9): miners better or worse than the benchmark
are priced through lookup tables, interpolated between entries."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from cgn_common.errors import InvalidArgumentError
from settlement.money import PPM


@dataclass(frozen=True)
class RatioTable:
    """A piecewise-linear map from a score to a price multiplier, both in ppm.

    ``points`` are (score, multiplier) pairs with strictly increasing scores. Between two
    points the multiplier is interpolated linearly and rounded down (toward minus infinity);
    outside them it is clamped to the first or last multiplier. At a point it is exact.
    """

    points: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise InvalidArgumentError("a ratio table needs at least one point")
        scores = [score for score, _ in self.points]
        if any(b <= a for a, b in pairwise(scores)):
            raise InvalidArgumentError("table scores must be strictly increasing")
        if any(score < 0 or multiplier < 0 for score, multiplier in self.points):
            raise InvalidArgumentError("table scores and multipliers must be non-negative")

    def lookup(self, score_ppm: int) -> int:
        """The multiplier (ppm) for a score (ppm of the benchmark)."""
        first_score, first_multiplier = self.points[0]
        if score_ppm <= first_score:
            return first_multiplier
        for (x0, y0), (x1, y1) in pairwise(self.points):
            if score_ppm <= x1:
                return y0 + (y1 - y0) * (score_ppm - x0) // (x1 - x0)
        return self.points[-1][1]


#: Default CPU table: the score is a thread's MIPS as ppm of the reference thread's. A faster
#: thread already bills more instructions per CPU-second; on top of that each instruction is
#: worth a little more (it answers sooner) and a slow thread's a little less. Defaults to be
#: tuned from use (the paper's "premade lookup tables" are not published).
DEFAULT_CPU_TABLE = RatioTable(
    (
        (250_000, 800_000),
        (500_000, 900_000),
        (1_000_000, 1_000_000),
        (2_000_000, 1_100_000),
        (4_000_000, 1_200_000),
    )
)

#: Default GPU table: the score is the GPU's GFLOPS as ppm of the reference GPU's. Same shape
#: as the CPU table, flatter. Defaults to be tuned.
DEFAULT_GPU_TABLE = RatioTable(
    (
        (250_000, 850_000),
        (1_000_000, 1_000_000),
        (4_000_000, 1_150_000),
    )
)


@dataclass(frozen=True)
class ReferenceHardware:
    """The AWS benchmark hardware of 2019-01-31 that scores are measured against."""

    #: MIPS of one reference CPU thread. A placeholder until the miner's fitness test is
    #: calibrated on an AWS instance (miner/fitness.py is an order-of-magnitude estimate).
    cpu_mips_per_thread: int = 10_000
    #: GFLOPS of the reference GPU: an NVIDIA V100 (AWS p3, FP32), 15.7 TFLOPS.
    gpu_gflops: int = 15_700

    def __post_init__(self) -> None:
        if self.cpu_mips_per_thread <= 0 or self.gpu_gflops <= 0:
            raise InvalidArgumentError("reference hardware figures must be positive")


@dataclass(frozen=True)
class MinerBenchmark:
    """What a miner's fitness test measured, in the units pricing uses."""

    #: MIPS of one hardware thread.
    cpu_mips_per_thread: int
    #: GFLOPS of its GPU, 0 without one.
    gpu_gflops: int = 0

    def __post_init__(self) -> None:
        if self.cpu_mips_per_thread <= 0 or self.gpu_gflops < 0:
            raise InvalidArgumentError("a miner needs a positive CPU figure and no negative GPU")

    @classmethod
    def from_fitness(cls, cpu_kmips: int, cpu_threads: int, gpu_gflops: int = 0) -> MinerBenchmark:
        """From the fitness report (``cgn.common.v1.Fitness``: KMIPS of all threads)."""
        if cpu_threads <= 0:
            raise InvalidArgumentError("a miner has at least one thread")
        return cls(max(1, cpu_kmips * 1000 // cpu_threads), gpu_gflops)


def score_ppm(measured: int, reference: int) -> int:
    """A measured figure as ppm of the reference, rounded down."""
    return measured * PPM // reference
