# swegym: the README's two commands are `make demo` (the main job) and `make test`.
# `make setup` (run by both) installs and caches everything outside the clone; see
# scripts/setup.sh. Slow tests run when SWEGYM_SLOW_TESTS=1 (CI sets it).

CARGO ?= cargo
DATASET ?= datasets/swebench-lite-marshmallow/tasks.jsonl

ifdef SWEGYM_SLOW_TESTS
export SWEGYM_SLOW_TESTS
endif

.PHONY: setup test demo

setup:
	@bash scripts/setup.sh

test: setup
	$(CARGO) test --workspace

demo: setup
	$(CARGO) run --release -p swegym -- dataset validate $(DATASET)
