# `make test` on a fresh clone: create .venv, install with the pinned constraints, run ruff and pytest offline.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: test lint demo bench clean-venv

# `make demo ARGS=--force` runs every stage again; ARGS=--toy checks the plumbing in a minute or two.

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m training.demo $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_model.py

clean-venv:
	rm -rf .venv
