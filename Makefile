# Cascade: make help lists the targets.

SHELL := /bin/bash
CARGO ?= cargo
BUF ?= node_modules/.bin/buf
GRPCURL ?= .venv/bin/grpcurl
TSC ?= node_modules/.bin/tsc
SERVICES := -p cascade-lifecycle -p cascade-scoring -p cascade-opportunity
FUZZ_SECONDS ?= 20
FUZZ_SEED ?=
BENCH_SECONDS ?= 10
BENCH_DATABASE_URL ?=
# One release build for every target that runs release binaries: the services
# and the load, demo and token tools in one cargo invocation, so features are
# resolved once and SQLx and SeaORM are compiled once (built in two
# invocations they were compiled twice: five minutes of a CI run).
# --locked: the versions in Cargo.lock, as reviewed, never a newer resolution.
RELEASE_BUILD := $(CARGO) build --release --locked $(SERVICES) -p cascade-tests --bins
# What the image ships (Dockerfile): the three services and cascade-token.
IMAGE_BINARIES := cascade-lifecycle cascade-scoring cascade-opportunity cascade-token
IMAGE_OUT ?= build/image
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

.PHONY: build
build: ## Build the three service binaries and the load/demo/token tools (release)
	$(RELEASE_BUILD)

.PHONY: image-binaries
# The Dockerfile's build step is this target, and CI runs it, so the image's
# recipe is the one tested (a `cargo build` of its own once built only
# cascade-token, and the image's copy of the services failed).
image-binaries: build ## Copy the binaries the image ships into IMAGE_OUT (default build/image)
	mkdir -p $(IMAGE_OUT)
	cp $(addprefix $${CARGO_TARGET_DIR:-target}/release/,$(IMAGE_BINARIES)) $(IMAGE_OUT)/

.PHONY: run
run: build ## Start lifecycle :50051, scoring :50052, opportunity :50053 on SQLite under ./data (Ctrl-C stops all)
	scripts/run-suite.sh

.PHONY: demo
demo: ## Play the source documents' story against `make run` (in another terminal); builds the release binaries first if needed
	@echo "make demo: building the release binaries first (quick when make run already built them)"
	$(RELEASE_BUILD) --quiet
	$${CARGO_TARGET_DIR:-target}/release/cascade-demo

.PHONY: test
# Building the tests builds every binary too (each package with binaries has
# integration tests), with the tests' features: a separate `cargo build`
# first compiled the whole tree a second time with other features.
test: ## Run every test (PostgreSQL variants too when CASCADE_TEST_POSTGRES_URL is set)
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --all-features --no-fail-fast
else
	$(CARGO) test --workspace --all-features --no-fail-fast
endif

.PHONY: fuzz
fuzz: ## Send hostile inputs to every RPC for FUZZ_SECONDS (default 20); FUZZ_SEED=N replays a run
	CASCADE_FUZZ_SECONDS=$(FUZZ_SECONDS) CASCADE_FUZZ_SEED=$(FUZZ_SEED) \
		$(CARGO) test --workspace --all-features --test fuzz -- --nocapture

.PHONY: bench
bench: ## Load-test the release binaries on SQLite, and on PostgreSQL too with BENCH_DATABASE_URL=postgres://... (BENCH_SECONDS per scenario); writes build/bench/{sqlite,postgres}/report.md
	$(RELEASE_BUILD)
	BENCH_SECONDS=$(BENCH_SECONDS) BENCH_DATABASE_URL= BENCH_OUT=build/bench/sqlite scripts/bench.sh
	if [ -n "$(BENCH_DATABASE_URL)" ]; then \
		BENCH_SECONDS=$(BENCH_SECONDS) BENCH_DATABASE_URL=$(BENCH_DATABASE_URL) BENCH_OUT=build/bench/postgres scripts/bench.sh; \
	fi

.PHONY: profile
profile: ## perf profile of scoring and lifecycle under ingest (PROFILE_SCENARIO, PROFILE_SECONDS); writes build/profile/summary.txt
	$(RELEASE_BUILD)
	scripts/profile.sh

.PHONY: pg-profile
pg-profile: ## Where PostgreSQL spends an ingest run (pg_stat_statements, backend states, CPU); PG_PROFILE_URL, PROFILE_SCENARIO; writes build/pg-profile/summary.txt
	$(RELEASE_BUILD)
	scripts/pg-profile.sh

.PHONY: bench-smoke
bench-smoke: ## make bench with 2 s per scenario, no targets asserted (CI)
	$(MAKE) bench BENCH_SECONDS=2 BENCH_DATABASE_URL=$(BENCH_DATABASE_URL)

.PHONY: lint
lint: tools-buf ## rustfmt check, clippy with warnings denied, buf lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	$(BUF) lint proto

.PHONY: proto-breaking
proto-breaking: tools-buf ## Compare the contracts with main: does a change break callers?
	$(BUF) breaking proto --against '.git#branch=main,subdir=proto'

.PHONY: smoke
smoke: build tools-grpcurl clients ## Start the release binaries, check them with grpcurl and the Python client, run the demo
	GRPCURL=$(GRPCURL) scripts/smoke.sh

.PHONY: clients
# proto/buf.gen.yaml says which generator makes what; every plugin is local
# and pinned. The TypeScript output is type-checked (strict, as Node ESM would
# load it) so a generator or runtime bump that breaks it fails here.
clients: tools-buf tools-clients ## Generate the Python and TypeScript clients from proto/ into build/clients
	$(BUF) generate proto --template proto/buf.gen.yaml
	$(TSC) --noEmit --strict --target es2022 --module nodenext --moduleResolution nodenext \
		$$(find build/clients/ts -name '*.ts')
	@echo "build/clients/python: $$(find build/clients/python -name '*_pb2.py' | wc -l) files of messages (+ gRPC stubs); build/clients/ts: $$(find build/clients/ts -name '*.ts' | wc -l) files"

.PHONY: k8s-check
k8s-check: tools-k8s ## Render every overlay, validate it against the Kubernetes API schemas, check every selector selects pods, run checkov
	@mkdir -p build
	@set -e; for overlay in dev production; do \
		kubectl kustomize k8s/overlays/$$overlay > build/k8s-$$overlay.yaml; \
		.venv/bin/kubernetes-validate --strict --quiet --kubernetes-version 1.33.0 build/k8s-$$overlay.yaml; \
		echo "k8s/overlays/$$overlay: $$(grep -c '^kind:' build/k8s-$$overlay.yaml) objects valid for Kubernetes 1.33"; \
	done
	.venv/bin/python scripts/k8s-selectors.py build/k8s-dev.yaml build/k8s-production.yaml
	.venv/bin/python scripts/k8s-shutdown.py build/k8s-dev.yaml build/k8s-production.yaml
	.venv/bin/checkov --framework kubernetes -f build/k8s-dev.yaml -f build/k8s-production.yaml --compact --quiet --skip-download

.PHONY: fmt
fmt: ## Format the Rust code
	$(CARGO) fmt --all

.PHONY: tools
tools: tools-buf tools-grpcurl tools-k8s tools-clients ## Install buf, protoc-gen-es, typescript (npm), grpcurl, kubernetes-validate, checkov, grpcio-tools (pip, in .venv)

.PHONY: tools-buf
tools-buf:
	@[ -x $(BUF) ] || npm ci --no-audit --no-fund

.PHONY: tools-grpcurl
tools-grpcurl:
	@[ -x $(GRPCURL) ] || (python3 -m venv .venv && .venv/bin/pip install --quiet -r requirements-tools.txt)

.PHONY: tools-k8s
tools-k8s:
	@[ -x .venv/bin/checkov ] && [ -x .venv/bin/kubernetes-validate ] || \
		(python3 -m venv .venv && .venv/bin/pip install --quiet -r requirements-tools.txt)

# The client generators: protoc-gen-es and tsc (npm, package.json), grpcio-tools
# and the Python runtime (pip, requirements-tools.txt). A tree installed before
# they were added lacks them: the checks look for them, not only for buf.
.PHONY: tools-clients
tools-clients:
	@[ -x node_modules/.bin/protoc-gen-es ] && [ -x $(TSC) ] || npm ci --no-audit --no-fund
	@.venv/bin/python -c 'import grpc_tools, grpc_status' 2>/dev/null || \
		(python3 -m venv .venv && .venv/bin/pip install --quiet -r requirements-tools.txt)

.PHONY: clean
clean: ## Remove build output and local data
	$(CARGO) clean
	rm -rf data
