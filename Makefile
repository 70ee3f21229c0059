# Two commands: `make serve` and `make test`. Both run the shared setup step first.
SHELL := /bin/bash
PORT ?= 8080
HOST ?= 127.0.0.1
export LD_LIBRARY_PATH := $(CURDIR)/.cache/vulkan/lib$(if $(LD_LIBRARY_PATH),:$(LD_LIBRARY_PATH))

.PHONY: setup serve test typecheck bench
setup:
	@bash scripts/setup.sh

serve: setup
	node bin/wgserve.mjs serve --host $(HOST) --port $(PORT)

test: setup
	npx tsc --noEmit
	npx vitest run

typecheck: setup
	npx tsc --noEmit

bench: setup
	node bin/wgserve.mjs bench kernels --json bench/results/kernels.json --markdown bench/results/kernels.md
