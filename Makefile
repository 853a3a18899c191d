# Every target installs what it needs first (scripts/setup.sh installs only what is missing).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: run test soak lint bench setup

## Set up and run the server on its embedded defaults (SQLite and files in ./data).
run: setup
	cargo build --release --bins
	target/release/rastercast serve

## Set up and run every test: Rust unit and integration tests (the store's on SQLite and on
## PostgreSQL, and files on S3-compatible storage: each started when none answers), the
## browser tests, then the API fuzzed against its own OpenAPI document. On the release build,
## the one that ships; the soak and the benches reuse it (`make run` builds the server without
## the test-only dependencies' features, so it recompiles part of the tree).
test: setup
	@./scripts/setup.sh --browser
	RASTERCAST_TEST_DATABASE_URL="$$(scripts/test-postgres.sh)" \
	RASTERCAST_TEST_S3_ENDPOINT="$$(scripts/test-s3.sh)" cargo test --release
	node --test tests/browser/
	scripts/fuzz-api.sh

## The soak: 3 × 2,000 conversions with random cancels under 500 churning subscribers (release build).
soak: setup
	cargo build --release --bins --example soak
	ulimit -n "$$(ulimit -Hn)"; target/release/examples/soak $(SOAK_ARGS)

## Benchmarks against their references, in release mode; writes docs/BENCHMARKS.md.
bench: setup
	cargo build --release --bins --example bench
	ulimit -n "$$(ulimit -Hn)"; target/release/examples/bench $(BENCH_ARGS)

## Formatting and lints, as CI would want them.
lint: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

setup:
	@./scripts/setup.sh
