"""medic: runbook automation for operations teams, built on Prefect."""
