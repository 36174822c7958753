"""Screenshots of the Prefect UI for the README, taken in a real browser (headless Chromium).

Why a script: the pictures in the README must show what the code does today, so they are made, not
drawn, and anyone can make them again:

    .venv/bin/python scripts/screenshots.py            # own lab + medic serve, both stopped at the end
    .venv/bin/python scripts/screenshots.py --reuse    # the lab (and medic serve) already running

It starts the lab and `medic serve` (or reuses them), produces three situations through the real
alert path — service-down on web-2 (remediated hands-off), disk-full on web-1 (paused for a human)
— and photographs, into docs/screenshots/:

    1-remediation-run.png   the run: its stages in the graph, their findings in the logs
    2-incident-report.png   the run's incident report artifact
    3-approval-form.png     the Resume dialog of the paused disk-full run, filled in (then submitted)
    4-deployment-form.png   the service-down deployment's "Custom run" parameter form

The browser is Debian's `chromium` (/usr/bin/chromium), driven by Playwright (the `screenshots`
extra, in requirements.lock); Playwright never downloads a browser here. If Chromium is missing the
script installs it with apt on first use (root; ~350 MB, about a minute). Every wait is on a
condition with a bound (a page selector, a run state), never a fixed sleep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from pydantic import BaseModel

from medic.core.net import wait_healthy
from medic.core.paths import PROJECT_ROOT
from medic.core.polling import wait_until
from medic.settings import get_settings
from medic_lab import control, faults
from medic_lab.processes import spawn, stop_process
from medic_lab.state import LabState

CHROMIUM = Path("/usr/bin/chromium")
DEB_PACKAGES = ["chromium", "fonts-noto-color-emoji"]  # the emoji font: the reports use ✅/❌
# Without these, Chromium as root on a closed network refuses to start or stalls on network calls.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
RUN_PAGE_HEIGHT = 1300  # the run page: the graph takes the first 900 px, the stages' log lines follow
MAX_DIALOG_HEIGHT = 2000  # the approval dialog's page grows to show the whole request, up to this
RUN_TIMEOUT_S = 180.0  # fault → alert → run → outcome took 7–40 s in the demo; generous for a busy machine
PAGE_TIMEOUT_MS = 30_000
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SERVE_STOP_GRACE_S = 30.0
SERVE_NAME = "medic-serve-screenshots"


def say(message: str) -> None:
    print(f"screenshots: {message}", flush=True)


def ensure_chromium() -> None:
    """Install Debian's Chromium on first use (it is not part of `make setup`: only this script needs it)."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0:
        raise SystemExit(f"{CHROMIUM} is missing: as root, run `apt-get install {' '.join(DEB_PACKAGES)}`")
    say(f"installing {' '.join(DEB_PACKAGES)} from Debian's packages (first use, ~350 MB) …")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEB_PACKAGES],
                   check=True, env=env, stdout=subprocess.DEVNULL)


# ---- the lab and medic serve ------------------------------------------------------------------

@contextmanager
def lab_and_serve(lab_dir: Path, *, base_port: int, serve_port: int, reuse: bool) -> Iterator[LabState]:
    """The lab with Alertmanager posting to a medic serve; stops only what it started."""
    started_lab = False
    serve: subprocess.Popen[bytes] | None = None
    webhook = f"http://127.0.0.1:{serve_port}/alertmanager"
    try:
        if control.lab_is_running(lab_dir):
            if not reuse:
                raise SystemExit(f"a lab is already running in {lab_dir}: pass --reuse to photograph it, "
                                 f"or stop it with `medic lab down`")
            lab = control.require_lab(lab_dir)
            say(f"reusing the lab in {lab_dir}")
        else:
            say(f"starting the lab in {lab_dir} (base port {base_port}) …")
            lab = control.up(lab_dir, hosts=3, base_port=base_port, webhook_url=webhook,
                             progress=lambda m: say(f"lab: {m}"))
            started_lab = True
        healthz = f"http://127.0.0.1:{serve_port}/healthz"
        if _answers(healthz):
            if not reuse:
                raise SystemExit(f"a medic serve already answers on port {serve_port}: pass --reuse to use "
                                 f"it, or --serve-port to start another")
            say(f"reusing medic serve on port {serve_port}")
        else:
            # As a lab process: `medic lab down` stops it too if this script is killed.
            # A state dir of its own: the flap guard must not remember earlier runs of this script.
            state_dir = lab.lab_dir / "screenshots-state"
            shutil.rmtree(state_dir, ignore_errors=True)
            serve = spawn(SERVE_NAME, [sys.executable, "-m", "medic", "serve", "--port", str(serve_port)],
                          lab_dir=lab.lab_dir, cwd=PROJECT_ROOT, env={"MEDIC_STATE_DIR": str(state_dir)})
            waited = wait_healthy(healthz, what="medic serve", timeout=90, proc=serve)
            say(f"medic serve ready on port {serve_port} in {waited:.1f} s "
                f"(log: {lab.lab_dir}/logs/{SERVE_NAME}.log)")
        if lab.webhook_url != webhook:
            control.set_webhook(lab, webhook)
        yield lab
    finally:
        if serve is not None:
            stop_process(serve.pid, grace=SERVE_STOP_GRACE_S)
        if started_lab:
            say("stopping the lab …")
            control.down(lab_dir)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---- Prefect's API: find the run an incident started --------------------------------------------

class RunSeen(BaseModel):
    """A flow run as this script needs it: which one, and its state (type, e.g. PAUSED, and name)."""

    id: str
    state: str
    name: str
    message: str = ""

    @classmethod
    def of(cls, run: dict[str, Any]) -> "RunSeen":
        return cls(id=run["id"], state=run["state"]["type"], name=run["state"]["name"],
                   message=run["state"].get("message") or "")


class Prefect:
    """The few reads of Prefect's REST API the script needs (the same API the UI reads)."""

    def __init__(self, api_url: str) -> None:
        self.api = api_url
        self.http = httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=10)

    def latest_run(self, runbook: str, target: str, since: datetime) -> RunSeen | None:
        runs = self.http.post("flow_runs/filter", json={
            "flow_runs": {"tags": {"all_": [f"runbook:{runbook}", f"target:{target}"]},
                          "expected_start_time": {"after_": since.isoformat()}},
            "sort": "EXPECTED_START_TIME_DESC", "limit": 1}).raise_for_status().json()
        return RunSeen.of(runs[0]) if runs else None

    def run(self, run_id: str) -> RunSeen:
        return RunSeen.of(self.http.get(f"flow_runs/{run_id}").raise_for_status().json())

    def wait_for_run(self, runbook: str, target: str, since: datetime, *, states: set[str]) -> RunSeen:
        """The newest run of `runbook` on `target` started after `since`, once its state is in `states`."""
        def look() -> RunSeen | None:
            run = self.latest_run(runbook, target, since)
            if run is not None and run.state == "PAUSED" and "PAUSED" not in states:
                raise SystemExit(f"{runbook} run {run.id} on {target} waits for a human instead of acting "
                                 f"(the flap guard, after earlier runs on this lab?); see its logs")
            return run

        return wait_until(look,
                          what=f"a {runbook} run on {target} in state {'/'.join(sorted(states))}",
                          timeout=RUN_TIMEOUT_S, interval=0.5, ignore=httpx.HTTPError,
                          done=lambda run: run is not None and run.state in states)

    def wait_for_end(self, run_id: str) -> RunSeen:
        return wait_until(lambda: self.run(run_id), what=f"run {run_id} finishing", timeout=RUN_TIMEOUT_S,
                          interval=0.5, ignore=httpx.HTTPError, done=lambda run: run.state in TERMINAL)

    def artifact_id(self, run_id: str, key_prefix: str) -> str:
        artifacts = self.http.post("artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [run_id]}}}).raise_for_status().json()
        for artifact in artifacts:
            if (artifact.get("key") or "").startswith(key_prefix):
                return artifact["id"]
        raise SystemExit(f"run {run_id} has no artifact whose key starts with {key_prefix!r} "
                         f"(it has: {[a.get('key') for a in artifacts]})")

    def deployment_id(self, flow: str, name: str) -> str:
        return self.http.get(f"deployments/name/{flow}/{name}").raise_for_status().json()["id"]


def incident(prefect: Prefect, lab: LabState, fault: str, host: str, runbook: str, *,
             states: set[str]) -> RunSeen:
    """Break `host` and wait for the run medic starts from the alert to reach one of `states`."""
    since = datetime.now(timezone.utc)
    say(f"{fault} on {host}: {faults.break_host(lab, fault, host)}")
    try:
        run = prefect.wait_for_run(runbook, host, since, states=states)
    except BaseException:  # a timeout, a run that waits for a human, Ctrl-C: leave a reused lab healthy
        say(f"putting {host} right: {faults.fix_host(lab, fault, host)}")
        raise
    say(f"{runbook} run {run.id} is {run.name}: {run.message}")
    return run


# ---- the browser ---------------------------------------------------------------------------------

@contextmanager
def browser() -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile, 1400x900."""
    with tempfile.TemporaryDirectory(prefix="medic-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def settle(page: Page) -> None:
    """Wait until the page has fetched what it shows and painted it (the run graph is a canvas)."""
    page.wait_for_load_state("networkidle")
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def expect(page: Page, selector: str, *, what: str, has_text: str | None = None) -> None:
    """Wait for real content; on timeout say what the page showed instead (a login page, an error)."""
    try:
        page.locator(selector, has_text=has_text).first.wait_for(state="visible")
    except PlaywrightError as exc:
        shown = page.locator("body").inner_text()[:300].replace("\n", " | ")
        raise SystemExit(f"{page.url}: no {what} ({selector}) within {PAGE_TIMEOUT_MS / 1000:.0f} s; "
                         f"the page shows: {shown!r}") from exc


def shoot(page: Page, out: Path) -> None:
    settle(page)
    page.screenshot(path=str(out))
    say(f"wrote {out.relative_to(PROJECT_ROOT) if out.is_relative_to(PROJECT_ROOT) else out}")


def photograph_run(page: Page, ui: str, run: RunSeen, out: Path) -> None:
    """The run graph (its stages) and, below it, the first lines of what each stage found."""
    page.set_viewport_size({"width": VIEWPORT["width"], "height": RUN_PAGE_HEIGHT})
    page.goto(f"{ui}/runs/flow-run/{run.id}")
    expect(page, ".state-badge", what="the run's final state", has_text=run.name)
    expect(page, ".flow-run-logs .logs", what="the run's logs", has_text="verify")
    expect(page, ".run-graph__stage canvas", what="the run graph")
    shoot(page, out)
    page.set_viewport_size(VIEWPORT)


def photograph_artifact(page: Page, ui: str, artifact_id: str, out: Path) -> None:
    page.goto(f"{ui}/artifacts/artifact/{artifact_id}")
    expect(page, ".markdown-renderer h1", what="the incident report")
    expect(page, ".markdown-renderer table", what="the report's timeline")
    shoot(page, out)


def _code_of(name: str) -> str:
    """The code alice's authenticator app would show now (her secret derives from MEDIC_APPROVAL_KEY)."""
    from medic.approval.identity import STEP_S, approver_secret, totp
    from medic.settings import get_settings

    key = get_settings().approval_key
    assert key is not None, "main() sets MEDIC_APPROVAL_KEY"
    return totp(approver_secret(key.get_secret_value(), name), int(time.time() // STEP_S))


def photograph_approval(page: Page, ui: str, prefect: Prefect, run: RunSeen, out: Path) -> RunSeen:
    """Open the Resume dialog, fill it in as an operator would, photograph it, submit it, wait for the end."""
    page.goto(f"{ui}/runs/flow-run/{run.id}")
    expect(page, ".state-badge", what="the paused state", has_text="Paused")
    page.get_by_role("button", name="Resume").first.click()
    dialog = page.locator(".p-modal__card")
    expect(page, ".p-modal__body .markdown-renderer", what="the approval request in the Resume dialog")
    decision = dialog.locator(".p-select-button__control").first
    decision.press("ArrowDown")  # a click does not open Prefect's select in headless Chromium; a key does
    expect(page, ".p-select-option", what="the decision choices", has_text="approve")
    page.locator(".p-select-option", has_text="approve").first.click()
    expect(page, ".p-modal__card .p-select-button__value", what="the chosen decision", has_text="approve")
    def field(label: str) -> Any:  # a form field by the words of its description
        return dialog.locator(".schema-form-property", has_text=label).first.locator("textarea, input").first

    field("your approver name").fill("alice")  # approvals are verified (issue 11): her name and her code
    field("6-digit code").fill(_code_of("alice"))
    field("why").fill("only *.tmp junk older than a day, as the check mode shows")
    # Prefect squeezes a long description into a small scroll box: grow the page so it shows whole.
    needed = page.evaluate("""() => {
        const body = document.querySelector('.p-modal__body');
        const md = body.querySelector('.markdown-renderer');
        const hidden = e => e.scrollHeight - e.clientHeight;
        return Math.ceil(window.innerHeight + hidden(md) + hidden(body));
    }""")
    height = max(VIEWPORT["height"], min(needed, MAX_DIALOG_HEIGHT))
    page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    shoot(page, out)
    dialog.get_by_role("button", name="Submit").click()
    try:  # the dialog closes once Prefect accepted the input; if it stays, it says why (a validation error)
        dialog.wait_for(state="hidden")
    except PlaywrightError as exc:
        raise SystemExit(f"the Resume dialog did not close after Submit; it shows: "
                         f"{dialog.inner_text()[-400:]!r}") from exc
    page.set_viewport_size(VIEWPORT)
    done = prefect.wait_for_end(run.id)
    say(f"after the approval in the UI the run ended {done.name}: {done.message}")
    return done


def photograph_deployment_form(page: Page, ui: str, deployment_id: str, out: Path) -> None:
    """The custom-run form, with a target typed in and dry run on (not submitted)."""
    page.goto(f"{ui}/deployments/deployment/{deployment_id}/run")
    expect(page, ".schema-form-property", what="the parameter form", has_text="target")
    target = page.locator(".schema-form-property", has_text="Inventory host or group").first
    target.get_by_role("button", name="str", exact=True).click()
    target.locator("textarea, input").first.fill("web-2")
    page.locator(".schema-form-property", has_text="check mode").first.get_by_role("switch").click()
    shoot(page, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true",
                        help="use the lab (and medic serve, if one answers on --serve-port) already running")
    parser.add_argument("--lab-dir", type=Path, help="default: MEDIC_LAB_DIR or the checkout's .lab")
    parser.add_argument("--base-port", type=int, help="the lab's base port (default: $MEDIC_LAB_BASE_PORT)")
    parser.add_argument("--serve-port", type=int, help="medic serve's port (default: $MEDIC_SERVER_PORT)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    os.environ.setdefault("MEDIC_APPROVAL_KEY", os.urandom(16).hex())  # medic serve inherits it (issue 11)
    for flag, var in ((args.lab_dir, "MEDIC_LAB_DIR"), (args.base_port, "MEDIC_LAB_BASE_PORT"),
                      (args.serve_port, "MEDIC_SERVER_PORT")):
        if flag is not None:  # before the first get_settings(): medic serve reads the same variables
            os.environ[var] = str(flag)
    settings = get_settings()
    began = time.monotonic()
    ensure_chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    with lab_and_serve(settings.lab_dir.resolve(), base_port=settings.lab_base_port,
                       serve_port=settings.server_port, reuse=args.reuse) as lab:
        prefect = Prefect(lab.prefect_api_url)
        ui = lab.prefect_api_url.removesuffix("/api")
        recovered = incident(prefect, lab, "service-down", "web-2", "service-down", states=TERMINAL)
        paused = incident(prefect, lab, "disk-full", "web-1", "disk-full", states={"PAUSED"} | TERMINAL)
        with browser() as context:
            page = context.new_page()
            photograph_run(page, ui, recovered, args.out / "1-remediation-run.png")
            photograph_artifact(page, ui, prefect.artifact_id(recovered.id, "incident-"),
                                args.out / "2-incident-report.png")
            if paused.state != "PAUSED":
                raise SystemExit(f"the disk-full run did not wait for a human: it ended {paused.name}")
            photograph_approval(page, ui, prefect, paused, args.out / "3-approval-form.png")
            photograph_deployment_form(page, ui, prefect.deployment_id("remediate", "service-down"),
                                       args.out / "4-deployment-form.png")
    say(f"done in {time.monotonic() - began:.0f} s; Prefect UI was {ui}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
