"""Capacity control, the pure part: what a controller sees, what it decides, and the HPA rule.

Two controllers decide how many instances of a service should take traffic, from the service's p95
latency against a target: Kubernetes' HPA rule (here, for comparison, exactly as documented) and
ours (``capacity_adaptive.AdaptiveController``). Both take an ``Observation`` every period and return
a ``Decision`` that carries its reason in words; nothing here touches the lab, so both are tested on
synthetic series (tests/procedures/test_capacity.py) and compared on the lab (bench/capacity.py).

The HPA rule (k8s.io/kubernetes pkg/controller/podautoscaler, behaviour defaults of autoscaling/v2):
every 15 s, ``desired = ceil(current × metric / target)``; nothing when ``|metric/target − 1| ≤ 0.1``;
scale-down stabilisation: the highest recommendation of the last 300 s wins; scale-up limited to
``max(100 % of current, +4)`` per 15 s; then min/max. ``HPASettings.scaled(f)`` divides every time
constant by ``f`` (the lab runs faster than a cluster).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from medic.errors import ConfigError

__all__ = ["CapacityLimits", "Decision", "HPARule", "HPASettings", "Observation", "ControllerName"]

ControllerName = Literal["adaptive", "hpa"]


class CapacityLimits(BaseModel):
    """What any controller may do: the range of instances, the largest step, the pause after a change."""

    min_instances: int = Field(1, ge=1, description="never fewer instances taking traffic")
    max_instances: int = Field(10, ge=1, description="never more instances taking traffic")
    max_step: int = Field(2, ge=1, description="most instances added or removed by one decision (ours)")
    cooldown_s: float = Field(6.0, ge=0, description="after a scale-up, wait this long before the next change (ours)")

    @model_validator(mode="after")
    def _range(self) -> "CapacityLimits":
        if self.min_instances > self.max_instances:
            raise ConfigError(f"capacity limits: min_instances {self.min_instances} > max_instances "
                              f"{self.max_instances}; give min ≤ max")
        return self

    def clamp(self, n: int) -> int:
        return max(self.min_instances, min(self.max_instances, n))


class Observation(BaseModel):
    """What a controller sees at one tick."""

    at: float = Field(description="seconds (any fixed origin, e.g. time.monotonic())")
    current: int = Field(ge=0, description="instances taking traffic now")
    p95_s: float | None = Field(None, description="p95 latency of the service, None when there is no data")
    rate_rps: float | None = Field(None, description="requests per second through the load balancer")
    served_rps: float | None = Field(None, description="of those, answered with success per second")


class Decision(BaseModel):
    """One decision of a controller: how many instances, and why in words."""

    controller: ControllerName
    at: float
    current: int
    desired: int
    p95_s: float | None = None
    target_s: float
    reason: str

    @property
    def change(self) -> int:
        return self.desired - self.current


def describe_p95(p95_s: float | None, target_s: float) -> str:
    if p95_s is None:
        return "no p95 (no traffic data)"
    word = ">" if p95_s > target_s else "<" if p95_s < target_s else "="
    return f"p95 {p95_s * 1000:.0f} ms {word} target {target_s * 1000:.0f} ms"


def signed(n: int) -> str:
    return f"{n:+d}" if n else "hold"


class HPASettings(BaseModel):
    """The HPA's documented defaults (kube-controller-manager and autoscaling/v2 behaviour)."""

    target_s: float = Field(gt=0, description="the metric's target value (here: p95 latency, seconds)")
    period_s: float = Field(15.0, gt=0, description="--horizontal-pod-autoscaler-sync-period")
    tolerance: float = Field(0.1, ge=0, description="--horizontal-pod-autoscaler-tolerance")
    down_window_s: float = Field(300.0, ge=0, description="scaleDown.stabilizationWindowSeconds")
    up_window_s: float = Field(0.0, ge=0, description="scaleUp.stabilizationWindowSeconds")
    up_percent: float = Field(100.0, gt=0, description="scaleUp policy: at most +100 % per period")
    up_pods: int = Field(4, ge=1, description="scaleUp policy: or at most +4 pods per period (the larger)")

    def scaled(self, factor: float) -> "HPASettings":
        """The same rule `factor` times faster (every time constant divided by `factor`)."""
        if factor <= 0:
            raise ConfigError(f"HPA time scale {factor!r} must be > 0 (e.g. 10: 15 s → 1.5 s)")
        return self.model_copy(update={"period_s": self.period_s / factor, "down_window_s": self.down_window_s / factor,
                                       "up_window_s": self.up_window_s / factor})


class HPARule:
    """Kubernetes' HPA rule, one `decide` per sync period (the caller keeps the period)."""

    name: ControllerName = "hpa"

    def __init__(self, settings: HPASettings, limits: CapacityLimits) -> None:
        self.settings, self.limits = settings, limits
        self._recommendations: deque[tuple[float, int]] = deque()

    def decide(self, obs: Observation) -> Decision:
        s, current = self.settings, obs.current
        if obs.p95_s is None or current == 0:
            # the HPA skips a period whose metric it cannot get (and scales from zero only by hand)
            return self._decision(obs, current, f"{describe_p95(obs.p95_s, s.target_s)}: no change")
        ratio = obs.p95_s / s.target_s
        if abs(ratio - 1.0) <= s.tolerance:
            raw, why = current, f"ratio {ratio:.2f} within tolerance {s.tolerance:.0%}"
        else:
            raw = math.ceil(current * ratio)
            why = f"ceil({current} × {ratio:.2f}) = {raw}"
        self._recommendations.append((obs.at, raw))
        horizon = obs.at - max(s.down_window_s, s.up_window_s)
        while self._recommendations and self._recommendations[0][0] < horizon:
            self._recommendations.popleft()
        up = min((r for t, r in self._recommendations if t >= obs.at - s.up_window_s), default=raw)
        down = max((r for t, r in self._recommendations if t >= obs.at - s.down_window_s), default=raw)
        desired = min(max(current, up), down)  # stabilisation, as stabilizeRecommendationWithBehaviors
        if desired != raw:
            why += f"; stabilised to {desired} (max of the last {s.down_window_s:g} s)" if desired > raw \
                else f"; stabilised to {desired}"
        ceiling = max(math.ceil(current * (1 + s.up_percent / 100)), current + s.up_pods)
        if desired > ceiling:
            desired, why = ceiling, why + f"; scale-up policy caps at {ceiling}"
        bounded = self.limits.clamp(desired)
        if bounded != desired:
            why += f"; limits [{self.limits.min_instances}, {self.limits.max_instances}] → {bounded}"
        return self._decision(obs, bounded, f"{describe_p95(obs.p95_s, s.target_s)}: {why} → {signed(bounded - current)}")

    def _decision(self, obs: Observation, desired: int, reason: str) -> Decision:
        return Decision(controller=self.name, at=obs.at, current=obs.current, desired=desired, p95_s=obs.p95_s,
                        target_s=self.settings.target_s, reason=reason)
