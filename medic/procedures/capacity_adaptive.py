"""Our capacity controller: PI on log(p95/target), with what the HPA rule lacks against latency.

Why not the HPA rule on latency: latency is not proportional to load. Near saturation p95 grows
many-fold for a few percent more load, so ``ceil(current × p95/target)`` adds far too many instances
(overshoot), and a queue still draining after a scale-up keeps p95 high for a while, so it adds more
again. Below target p95 barely changes with the number of instances, so it says little about how many
can go. What this controller does instead:

- **Up**: PI on ``e = ln(p95/target)`` (clipped to ±2): ``u = kp·e + ki·∫e``, step ``round(u)`` capped
  at ``max_step``. The log makes 2× over target and 2× under symmetric and tames the blow-up.
- **Anti-windup**: nothing integrates while a change is still taking effect (``cooldown_s``) or at
  max instances; the integral resets after each change and decays inside the band.
- **Wait for the effect**: after a scale-up, hold ``cooldown_s``; then hold while p95 is already
  falling fast, or while more requests are answered than arrive (a backlog draining: p95 is high
  only because of the past) — the derivative's job, without its noise gain.
- **Saturated**: fewer answered than arrive means every instance is busy all the time, so the answered
  rate per instance *is* its capacity: size for ``utilisation`` of it at once (within ``max_step``)
  instead of reading a latency that only says "queue".
- **Learned capacity**: per-instance request rates seen when p95 was within target cap a scale-up at
  ``ceil(rate / best rate seen within target)``; the lowest per-instance rate seen over target forbids
  a scale-down that would put each instance back at that load (the oscillation the HPA's users report),
  and a scale-down may not load each instance more than ``explore`` × the best rate seen within target.
- **Down**: only after p95 stayed under ``down_band × target`` for ``down_window_s`` (a stabilisation
  that noise cannot reverse); one instance at a time, or down to what the learned rate says serves the
  load (at most ``max_step``), never below the limits.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from medic.procedures.capacity import (CapacityLimits, ControllerName, Decision, Observation, describe_p95,
                                       signed)

__all__ = ["AdaptiveController", "AdaptiveSettings"]


class AdaptiveSettings(BaseModel):
    """Tuning of the adaptive controller (defaults: lab time, where 1 s stands for ~10 s of a cluster)."""

    target_s: float = Field(gt=0, description="p95 latency to hold, seconds")
    kp: float = Field(1.2, ge=0, description="instances per unit of ln(p95/target)")
    ki: float = Field(0.15, ge=0, description="instances per second·unit of ln(p95/target)")
    integral_max: float = Field(8.0, gt=0, description="anti-windup bound of ∫e (unit·s)")
    up_band: float = Field(1.1, ge=1, description="p95 above target × this is over target")
    down_band: float = Field(0.5, gt=0, le=1, description="p95 under target × this is comfortably under")
    down_window_s: float = Field(30.0, ge=0, description="p95 must stay comfortably under this long before -1")
    falling: float = Field(0.8, gt=0, le=1, description="p95 below this × the previous one: already improving")
    safety: float = Field(0.8, gt=0, le=1, description="scale down only to under this × the rate seen over target")
    memory_s: float = Field(600.0, gt=0, description="how long a learned per-instance rate is trusted")
    explore: float = Field(1.5, ge=1, description="scale down to at most this × the best per-instance rate seen within target")
    utilisation: float = Field(0.75, gt=0, le=1, description="share of the measured capacity to size for when saturated")
    draining: float = Field(1.05, ge=1, description="answered > this × arriving: a backlog is draining, hold")


class AdaptiveController:
    """Decides every period; state: the integral, the last change, and learned per-instance rates."""

    name: ControllerName = "adaptive"

    def __init__(self, settings: AdaptiveSettings, limits: CapacityLimits) -> None:
        self.settings, self.limits = settings, limits
        self.integral = 0.0
        self.last_change_at: float | None = None
        self.below_since: float | None = None
        self.prev: Observation | None = None
        self.good_rate: tuple[float, float] | None = None  # (highest per-instance rps within target, when)
        self.bad_rate: tuple[float, float] | None = None  # (lowest per-instance rps over target, when)

    def decide(self, obs: Observation) -> Decision:
        prev, self.prev = self.prev, obs
        s, target = self.settings, self.settings.target_s
        if obs.p95_s is None or obs.current == 0:
            return self._decision(obs, obs.current, f"{describe_p95(obs.p95_s, target)}: hold")
        dt = min(max(obs.at - prev.at, 0.0), 10.0) if prev else 0.0
        e = max(-2.0, min(2.0, math.log(max(obs.p95_s, 1e-6) / target)))
        since = obs.at - self.last_change_at if self.last_change_at is not None else math.inf
        settled = since >= self.limits.cooldown_s
        falling = prev is not None and prev.p95_s is not None and obs.p95_s < s.falling * prev.p95_s
        self._learn(obs, settled and not falling)
        self.below_since = (self.below_since or obs.at) if obs.p95_s < s.down_band * target else None
        head = describe_p95(obs.p95_s, target)

        if obs.p95_s > s.up_band * target:
            if not settled:
                return self._decision(obs, obs.current, f"{head}: hold, the last change is {since:.0f} s old "
                                      f"(cooldown {self.limits.cooldown_s:g} s)")
            if falling:
                return self._decision(obs, obs.current, f"{head}: hold, p95 already falling "
                                      f"({prev.p95_s * 1000:.0f} → {obs.p95_s * 1000:.0f} ms)")
            if obs.current >= self.limits.max_instances:
                return self._decision(obs, obs.current, f"{head}: hold, at max {self.limits.max_instances} instances")
            if obs.served_rps is not None and obs.rate_rps:
                if obs.served_rps > s.draining * obs.rate_rps:
                    return self._decision(obs, obs.current, f"{head}: hold, a backlog is draining (answering "
                                          f"{obs.served_rps:.0f} req/s, {obs.rate_rps:.0f} arriving)")
                if obs.served_rps < obs.rate_rps / s.draining and obs.served_rps > 0:
                    per = obs.served_rps / obs.current
                    needed = math.ceil(obs.rate_rps / (per * s.utilisation))
                    step = max(1, min(self.limits.max_step, needed - obs.current))
                    return self._change(obs, self.limits.clamp(obs.current + step),
                                        f"{head}: saturated, answering {obs.served_rps:.0f} of {obs.rate_rps:.0f} "
                                        f"req/s ({per:.1f} per instance at most): {needed} needed at "
                                        f"{s.utilisation:.0%}")
            self.integral = min(s.integral_max, self.integral + e * dt)
            u = s.kp * e + s.ki * self.integral
            step = min(self.limits.max_step, int(math.floor(u + 0.5)))
            if step < 1:
                return self._decision(obs, obs.current, f"{head}: hold, u = {u:.2f} < 0.5 (integrating)")
            desired, why = obs.current + step, f"u = {u:.2f}"
            cap = self._needed(obs)
            if cap is not None and cap < desired:
                desired = max(obs.current + 1, cap)
                why += f", learned capacity says {cap} serve {obs.rate_rps:.0f} req/s"
            return self._change(obs, self.limits.clamp(desired), f"{head}: {why}")

        if obs.p95_s < s.down_band * target:
            self.integral = 0.0
            below_for = obs.at - self.below_since
            if obs.current <= self.limits.min_instances:
                return self._decision(obs, obs.current, f"{head}: hold, at min {self.limits.min_instances}")
            if below_for < s.down_window_s or since < s.down_window_s:
                return self._decision(obs, obs.current, f"{head}: hold, under {s.down_band:.0%} of target for "
                                      f"{below_for:.0f} s of {s.down_window_s:g} s")
            after = obs.rate_rps / (obs.current - 1) if obs.rate_rps is not None else None
            if self.bad_rate and after is not None and after > s.safety * self.bad_rate[0]:
                return self._decision(obs, obs.current, f"{head}: hold, {obs.current - 1} instances would take "
                                      f"{after:.1f} req/s each; p95 went over target at {self.bad_rate[0]:.1f}")
            if self.good_rate and after is not None and after > s.explore * self.good_rate[0]:
                return self._decision(obs, obs.current, f"{head}: hold, {obs.current - 1} instances would take "
                                      f"{after:.1f} req/s each; within target seen up to {self.good_rate[0]:.1f}")
            needed = self._needed(obs)
            step = min(self.limits.max_step, obs.current - needed) if needed is not None else 1
            desired = max(self.limits.min_instances, obs.current - max(1, step))
            return self._change(obs, desired, f"{head} for {below_for:.0f} s")

        self.integral *= 0.5  # inside the band: forget old error slowly
        return self._decision(obs, obs.current, f"{head}: hold, within {s.down_band:.0%}–{s.up_band:.0%} of target")

    # -- learning --------------------------------------------------------------------------------

    def _learn(self, obs: Observation, steady: bool) -> None:
        if not steady or obs.rate_rps is None or obs.current <= 0 or obs.p95_s is None:
            return
        per, s = obs.rate_rps / obs.current, self.settings
        if obs.p95_s <= s.target_s:
            if not self.good_rate or per > self.good_rate[0] or obs.at - self.good_rate[1] > s.memory_s:
                self.good_rate = (per, obs.at)
        elif obs.p95_s > s.up_band * s.target_s:
            if not self.bad_rate or per < self.bad_rate[0] or obs.at - self.bad_rate[1] > s.memory_s:
                self.bad_rate = (per, obs.at)

    def _needed(self, obs: Observation) -> int | None:
        """Instances that served this rate within target per what was seen, or None if unknown."""
        if not self.good_rate or obs.rate_rps is None or obs.at - self.good_rate[1] > self.settings.memory_s:
            return None
        return math.ceil(obs.rate_rps / self.good_rate[0])

    def _change(self, obs: Observation, desired: int, why: str) -> Decision:
        if desired != obs.current:
            self.last_change_at, self.integral, self.below_since = obs.at, 0.0, None
        return self._decision(obs, desired, f"{why} → {signed(desired - obs.current)}")

    def _decision(self, obs: Observation, desired: int, reason: str) -> Decision:
        return Decision(controller=self.name, at=obs.at, current=obs.current, desired=desired, p95_s=obs.p95_s,
                        target_s=self.settings.target_s, reason=reason)
