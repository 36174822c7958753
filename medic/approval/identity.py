"""Who decided: proofs of identity for approvals, never claims.

One secret, the approval key (`MEDIC_APPROVAL_KEY`), is shared by medic serve and every process that
runs flows. From it medic derives each approver's own credential, so nothing per person is stored:

    secret(name)  = HMAC-SHA256(approval_key, "approver:" + name)[:20]   `medic approvers issue NAME`
    UI code       = RFC 6238 TOTP of secret(name): 6 digits, 30 s steps, ±1 step; each step counts
                    once per approver (remembered in Prefect, so any worker refuses a reused code)
    CLI proof     = "cli:<ts>:"   + HMAC(secret(name), run|pause key|decision|ts)   `medic approve`
    Slack proof   = "slack:<user>:<ts>:" + HMAC(approval_key, "slack"|run|pause key|decision|user|ts),
                    made by medic serve after Slack's signature and the approver directory checked out
    alert proof   = "alert:<ts>:" + HMAC(approval_key, "alert"|run|pause key|withdraw|ts): medic serve
                    withdrawing a request whose alert resolved (a withdrawal only)

A proof is bound to one run, one pause and one decision and is at most 300 s old, so it cannot be
replayed anywhere else; the identity is the directory name, whichever way it was proven. Revoke a
person by removing them from `approvers.yaml`, everyone by rotating the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time
from urllib.parse import quote

from pydantic import BaseModel

__all__ = ["Verdict", "alert_proof", "approver_secret", "check", "cli_proof", "decode_secret", "encode_secret",
           "otpauth_uri", "slack_proof", "totp", "used_step_variable"]

STEP_S = 30
DIGITS = 6
WINDOW_STEPS = 1
PROOF_MAX_AGE_S = 300
FUTURE_SKEW_S = 30
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation; 32 base32 characters without padding


def approver_secret(approval_key: str, name: str) -> bytes:
    """The credential medic issues to `name`: derived, so nothing per approver is stored."""
    return hmac.new(approval_key.encode(), b"approver:" + name.encode(), hashlib.sha256).digest()[:SECRET_BYTES]


def encode_secret(secret: bytes) -> str:
    """As typed into an authenticator app or MEDIC_APPROVER_SECRET: base32, no padding."""
    return base64.b32encode(secret).decode().rstrip("=")


def decode_secret(text: str) -> bytes | None:
    """The secret from its base32 text (spaces, case and padding ignored); None if it is not one."""
    cleaned = text.strip().replace(" ", "").upper().rstrip("=")
    try:
        secret = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except ValueError:
        return None
    return secret if len(secret) == SECRET_BYTES else None


def otpauth_uri(name: str, secret: bytes, issuer: str = "medic") -> str:
    """The `otpauth://totp/…` URI an authenticator app scans (as a QR code) or imports."""
    return (f"otpauth://totp/{quote(issuer)}:{quote(name)}?secret={encode_secret(secret)}&issuer={quote(issuer)}"
            f"&algorithm=SHA1&digits={DIGITS}&period={STEP_S}")


def totp(secret: bytes, step: int) -> str:
    """RFC 6238 (HMAC-SHA1, dynamic truncation of RFC 4226) for one 30 s step."""
    digest = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10 ** DIGITS).zfill(DIGITS)


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def cli_proof(secret: bytes, *, run_id: str, pause_key: str, decision: str, ts: int | None = None) -> str:
    """What `medic approve` sends instead of a code: this run, this pause, this decision, now."""
    ts = int(time.time()) if ts is None else ts
    return f"cli:{ts}:{_mac(secret, run_id, pause_key, decision, str(ts))}"


def slack_proof(approval_key: str, *, run_id: str, pause_key: str, decision: str, user: str,
                ts: int | None = None) -> str:
    """What medic serve sends for a verified Slack click by an allowed approver."""
    ts = int(time.time()) if ts is None else ts
    mac = _mac(approval_key.encode(), "slack", run_id, pause_key, decision, user, str(ts))
    return f"slack:{user}:{ts}:{mac}"


def alert_proof(approval_key: str, *, run_id: str, pause_key: str, ts: int | None = None) -> str:
    """What medic serve sends to withdraw a request whose alert resolved."""
    ts = int(time.time()) if ts is None else ts
    return f"alert:{ts}:{_mac(approval_key.encode(), 'alert', run_id, pause_key, 'withdraw', str(ts))}"


def used_step_variable(name: str, step: int) -> str:
    """The Prefect variable whose creation claims one TOTP step of one approver (created once, ever)."""
    return f"medic-totp-{hashlib.sha256(name.encode()).hexdigest()[:16]}-{step}"


class Verdict(BaseModel):
    """What a decision proved: who (a directory name, or "alertmanager"), how, or why it is refused."""

    ok: bool
    name: str = ""
    via: str = ""  # ui (code), cli, slack, alert
    reason: str = ""
    step: int | None = None  # a code's TOTP step: the caller claims it once (see used_step_variable)

    @classmethod
    def refused(cls, reason: str, via: str = "") -> "Verdict":
        return cls(ok=False, reason=reason, via=via)


def _fresh(ts_text: str, now: float) -> str | None:
    """Why a proof's timestamp is unusable, or None when it is within PROOF_MAX_AGE_S."""
    if not ts_text.isdigit():
        return "malformed proof timestamp"
    age = now - int(ts_text)
    if age > PROOF_MAX_AGE_S:
        return f"proof is {age:.0f} s old (at most {PROOF_MAX_AGE_S} s)"
    if age < -FUTURE_SKEW_S:
        return "proof timestamp is in the future"
    return None


def check(*, decision: str, approver: str, code: str, proof: str, run_id: str, pause_key: str,
          approval_key: str, known: set[str], slack_ids: dict[str, str], now: float | None = None) -> Verdict:
    """Verify one decision's proof for THIS run and pause. `known`: the directory's names; `slack_ids`:
    Slack user id → name. Says who it proves, never whether they may decide (the policy's business)."""
    now = time.time() if now is None else now
    if proof:
        kind, _, rest = proof.partition(":")
        if kind == "cli":
            if approver not in known:
                return Verdict.refused(f"{approver!r} is not in the approver directory", "cli")
            ts, _, mac = rest.partition(":")
            secret = approver_secret(approval_key, approver)
            want = _mac(secret, run_id, pause_key, decision, ts)
            if not hmac.compare_digest(mac, want):
                return Verdict.refused("forged or misdirected CLI proof (wrong secret, run, pause or decision)", "cli")
            stale = _fresh(ts, now)
            return Verdict.refused(stale, "cli") if stale else Verdict(ok=True, name=approver, via="cli")
        if kind == "slack":
            user, _, rest = rest.partition(":")
            ts, _, mac = rest.partition(":")
            want = _mac(approval_key.encode(), "slack", run_id, pause_key, decision, user, ts)
            if not hmac.compare_digest(mac, want):
                return Verdict.refused("forged or misdirected Slack proof", "slack")
            stale = _fresh(ts, now)
            if stale:
                return Verdict.refused(stale, "slack")
            name = slack_ids.get(user)
            if name is None:
                return Verdict.refused(f"Slack user {user} is not in the approver directory", "slack")
            return Verdict(ok=True, name=name, via="slack")
        if kind == "alert":
            ts, _, mac = rest.partition(":")
            want = _mac(approval_key.encode(), "alert", run_id, pause_key, "withdraw", ts)
            if decision != "withdraw" or not hmac.compare_digest(mac, want):
                return Verdict.refused("forged or misdirected alert withdrawal", "alert")
            stale = _fresh(ts, now)
            return Verdict.refused(stale, "alert") if stale else Verdict(ok=True, name="alertmanager", via="alert")
        return Verdict.refused("unknown kind of proof")
    if not code:
        return Verdict.refused(f"no proof: {approver!r} gave no code (a decision needs the approver's 6-digit code)", "ui")
    if approver not in known:
        return Verdict.refused(f"{approver!r} is not in the approver directory", "ui")
    secret = approver_secret(approval_key, approver)
    current = int(now // STEP_S)
    for step in range(current - WINDOW_STEPS, current + WINDOW_STEPS + 1):
        if hmac.compare_digest(totp(secret, step), code):
            return Verdict(ok=True, name=approver, via="ui", step=step)
    return Verdict.refused(f"wrong or expired code for {approver!r}", "ui")
