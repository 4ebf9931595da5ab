# One set-up path for everything: each target creates ./.venv if needed (scripts/setup_env.sh), then runs.
# `make demo` installs the core and the Lightning extra only (minutes); `make test` installs everything.
PY := .venv/bin/python

.PHONY: setup setup-demo test demo demo-det demo-seg lint clean-venv

setup:
	@bash scripts/setup_env.sh full

setup-demo:
	@bash scripts/setup_env.sh demo

test: setup
	$(PY) -m pytest -q

demo: setup-demo
	$(PY) tools/train_cls.py fit --config configs/cls/demo.yaml

# detection / segmentation demos (CPU, under 10 minutes each; need mmcv, hence the full set-up)
demo-det: setup
	$(PY) tools/train_det.py configs/det/demo.py

demo-seg: setup
	$(PY) tools/train_seg.py configs/seg/demo.py

lint: setup
	$(PY) -m ruff check swtasks tools tests benchmarks

clean-venv:
	rm -rf .venv
