"""Click → flow continues: from a Slack-signed click arriving at `POST /slack/actions` to the paused
flow running again (its next timeline entry), median of N.

Runs medic's real Starlette app (the same `slack_actions` endpoint and `ClickHandler` medic serve
mounts) on 127.0.0.1 with a local fake of Slack's Web API, and a small flow that pauses with
`request_decision` (the remediation flow's approval step) against a Prefect server.

    PREFECT_API_URL=http://127.0.0.1:4200/api python bench/approval_latency.py -n 7

Needs a running Prefect API (e.g. the lab's: `medic lab up`, then its PREFECT_API_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medic.core.net import free_port  # noqa: E402
from tests.fakes.slack_api import FakeSlack  # noqa: E402
from tests.fakes.slack_signing import SIGNING_SECRET, post_block_action  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=7, help="clicks to measure")
    args = parser.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        print("set PREFECT_API_URL to a running Prefect server (…/api)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="medic-bench-approval-") as state, FakeSlack() as slack:
        state_dir = Path(state)
        os.environ.update(MEDIC_STATE_DIR=str(state_dir), MEDIC_SLACK_API_URL=slack.base_url,
                          MEDIC_SLACK_BOT_TOKEN=slack.token, MEDIC_SLACK_SIGNING_SECRET=SIGNING_SECRET,
                          MEDIC_SLACK_CHANNEL="C0BENCH", MEDIC_PREFECT_API_URL=os.environ["PREFECT_API_URL"])
        # approvals are verified (issue 11): the clicking user is alice of a bench approver directory
        (state_dir / "approvers.yaml").write_text("approvers:\n  - {name: alice, slack_id: U0BENCH}\n")
        os.environ.update(MEDIC_APPROVAL_KEY=os.urandom(16).hex(), MEDIC_APPROVERS_FILE=str(state_dir / "approvers.yaml"))
        return asyncio.run(_bench(args.n, slack))


async def _bench(n: int, slack: FakeSlack) -> int:
    import uvicorn
    from prefect import flow
    from prefect.context import get_run_context

    from medic.approval.gate import PAUSE_POLL_INTERVAL_S, ApprovalRequest, request_decision
    from medic.core.progress import Timeline, add_listener
    from medic.orchestration.runs import fast_run_settings, run_flow_now
    from medic.core.runbook import Approval
    from medic.service.app import create_app
    from medic.service.state import build_state
    from medic.settings import get_settings

    continued: dict[str, float] = {}
    policy = Approval(policy="required", timeout=60)

    @flow(name="approval-latency-bench", persist_result=False)
    async def waits_for_approval(runbook: str = "disk-full") -> None:  # its approvers: the endpoint checks them
        run_id = str(get_run_context().flow_run.id)
        request = ApprovalRequest(title="bench", runbook=runbook, targets=["web-1"], evidence="q > 1 → web-1=2",
                                  planned_action="nothing", flow_run_id=run_id)
        await request_decision(request, policy, timeline=Timeline())

    def on_entry(entry, recorded: bool) -> None:  # the flow's first note after the pause: it continues
        if recorded and entry.message.startswith("approved by"):
            continued.setdefault("t", time.perf_counter())

    settings = get_settings()
    state = build_state(settings, waits_for_approval)  # its launcher stays idle: the bench runs the flow itself
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", access_log=False))
    serving = asyncio.create_task(server.serve())
    remove = add_listener(on_entry)
    figures: list[float] = []
    try:
        with fast_run_settings():
            for _ in range(n):
                continued.clear()
                running = asyncio.create_task(run_flow_now(waits_for_approval, {"runbook": "disk-full"}))
                card = await _next_card(slack, len(figures))
                run_id = next(e["value"] for b in card.args["blocks"] if b["type"] == "actions" for e in b["elements"])
                await asyncio.sleep(1.0)  # let it settle into the pause
                sent = time.perf_counter()
                response = await asyncio.to_thread(post_block_action, f"http://127.0.0.1:{port}/slack/actions",
                                                   value=run_id, user_id="U0BENCH", channel_id=card.args["channel"],
                                                   message_ts=card.response["ts"])
                assert response.status_code == 200, response.text
                await running
                figures.append(continued["t"] - sent)
    finally:
        remove()
        server.should_exit = True
        await serving
    median = statistics.median(figures)
    print(f"click → flow continues: median {median:.3f} s over {n} clicks "
          f"(min {min(figures):.3f}, max {max(figures):.3f}); pause poll interval {PAUSE_POLL_INTERVAL_S} s")
    print("the endpoint answers 200 before it resumes (background task), well inside Slack's 3 s")
    return 0 if median < 1.0 else 1


async def _next_card(slack: FakeSlack, already: int):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cards = [c for c in slack.calls("chat.postMessage") if c.ok and c.args.get("blocks")]
        if len(cards) > already:
            return cards[already]
        await asyncio.sleep(0.05)
    raise TimeoutError("no approval card was posted")


if __name__ == "__main__":
    sys.exit(main())
