# One set-up path for everything: each target creates ./.venv if needed (scripts/setup_env.sh), then runs.
PY := .venv/bin/python

.PHONY: setup test demo lint clean-venv

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) tools/train_cls.py fit --config configs/cls/demo.yaml

lint: setup
	$(PY) -m ruff check swtasks tools tests

clean-venv:
	rm -rf .venv
