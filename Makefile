# swegym: the README's two commands are `make demo` (the main job) and `make test`.
# `make setup` (run by both) installs and caches everything outside the clone; see
# scripts/setup.sh. Slow tests run when SWEGYM_SLOW_TESTS=1 (CI sets it).

CARGO ?= cargo

ifdef SWEGYM_SLOW_TESTS
export SWEGYM_SLOW_TESTS
endif

.PHONY: setup test demo

setup:
	@bash scripts/setup.sh

test: setup
	$(CARGO) test --workspace

# The demo RFT run (configs/demo.toml): resumes runs/demo/ when it exists; the table and
# plots are in runs/demo/report.md, resolve_rate.svg, empty_patch_rate.svg.
demo: setup
	$(CARGO) run --release -p swegym -- run configs/demo.toml
