# The two commands: `make demo` and `make test`. Both run the idempotent `make setup` first.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup demo demo-stop test chaos lab-up lab-down cluster clean

setup:
	@scripts/setup.sh

# `make demo KEEP=1` leaves the lab, medic serve and the Prefect UI running; `make demo-stop` stops them.
demo: setup
	@$(PY) -m medic_lab.demo $(if $(filter 1 yes true,$(KEEP)),--keep)

demo-stop: setup
	@.venv/bin/medic lab down

test: setup
	@$(PY) -m pytest $(PYTEST_ARGS)

# The fault-injection suite (README "Chaos"), slow cases included; `make test` runs its quick core.
chaos: setup
	@$(PY) -m pytest -m chaos $(PYTEST_ARGS) tests/chaos

lab-up: setup
	@.venv/bin/medic lab up

lab-down: setup
	@.venv/bin/medic lab down

# The production topology in the lab (README "Operate it → production topology"): Prefect on
# PostgreSQL behind auth, two `medic worker`s as their own users, `medic serve` as intake only.
# `make lab-down` stops it.
cluster: setup
	@.venv/bin/medic lab up --with cluster

clean:
	-@.venv/bin/medic lab down 2>/dev/null
	rm -rf .lab .venv
