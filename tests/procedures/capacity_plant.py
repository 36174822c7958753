"""A synthetic service for the capacity controllers' unit tests: queueing latency, backlog, lag, noise.

Deterministic for a seed. Per instance a capacity of `per_instance_rps`; p95 = service time ×
(1 + 2.5·ρ/(1−ρ)) below saturation plus the backlog's wait (the backlog grows while the load is over
capacity and drains after); a new instance takes one tick to serve; the controller sees p95 averaged
over the last 3 ticks (Prometheus' rate window) with multiplicative noise.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable

from medic.procedures.capacity import Decision, Observation


class Plant:
    def __init__(self, *, instances: int, per_instance_rps: float = 25.0, service_s: float = 0.04,
                 noise: float = 0.08, seed: int = 1) -> None:
        self.instances, self.serving = instances, instances
        self.k, self.service_s, self.noise = per_instance_rps, service_s, noise
        self.backlog = 0.0
        self.window: deque[float] = deque(maxlen=3)
        self.rng = random.Random(seed)

    def step(self, load_rps: float, dt: float) -> tuple[float, float, float]:
        """Advance dt seconds at `load_rps`; returns the observed p95 (s), arrival and answered rates."""
        capacity = self.serving * self.k
        self.backlog = max(0.0, self.backlog + (load_rps - capacity) * dt)
        rho = min(load_rps / capacity, 0.97)
        p95 = self.service_s * (1 + 2.5 * rho / (1 - rho)) + self.backlog / capacity
        self.window.append(min(p95, 5.0))
        served = capacity if self.backlog > 0 else min(load_rps, capacity)
        self.serving = self.instances  # a started instance serves from the next tick on
        seen = sum(self.window) / len(self.window) * math.exp(self.rng.gauss(0, self.noise))
        jitter = math.exp(self.rng.gauss(0, self.noise / 2))
        return seen, load_rps * jitter, served * jitter


def simulate(controller, plant: Plant, load: Callable[[float], float], *, duration_s: float,
             period_s: float) -> list[Decision]:
    """Run `controller` against `plant` for `duration_s`; every decision, applied at once."""
    decisions, t = [], 0.0
    while t < duration_s:
        p95, rate, served = plant.step(load(t), period_s)
        d = controller.decide(Observation(at=t, current=plant.instances, p95_s=p95, rate_rps=rate, served_rps=served))
        plant.instances = d.desired
        decisions.append(d)
        t += period_s
    return decisions


def reversals(decisions: list[Decision]) -> int:
    """Direction changes between successive changes (up then down, or down then up)."""
    signs = [1 if d.change > 0 else -1 for d in decisions if d.change]
    return sum(1 for a, b in zip(signs, signs[1:]) if a != b)
