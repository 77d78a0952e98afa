# Dojang — the two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing first (`make deps`, Debian/Ubuntu, apt-get).

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the build, the tests and the demo need.
DEB_PACKAGES := build-essential pkg-config libssl-dev libtss2-dev \
	softhsm2 opensc p11-kit p11-kit-modules swtpm swtpm-tools tpm2-tools openssl \
	python3 python3-venv curl systemd bsdutils iproute2 \
	postgresql-client
# Independent credential verifiers (Python), in a venv the tests use.
VENV := .venv
PY_REQUIREMENTS := softhsm-tests/python/requirements.txt
# The scripted holder wallet (npm @openid4vc/openid4vci, jose) the tests and
# the demo drive OpenID4VCI issuance with; versions pinned by its lock file.
WALLET := softhsm-tests/wallet

.PHONY: all deps build test lint unit e2e bench bench-audit bench-load bench-rotation demo demo-clean clean fuzz fuzz-smoke

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "make deps: cargo not found; install Rust (rustup) first"; exit 1; }
	@$(CARGO) nextest --version >/dev/null 2>&1 || { \
		echo "make deps: installing cargo-nextest"; $(CARGO) install --locked cargo-nextest; }
	@$(CARGO) deny --version >/dev/null 2>&1 || { \
		echo "make deps: installing cargo-deny"; $(CARGO) install --locked cargo-deny; }
	@$(CARGO) fuzz --version >/dev/null 2>&1 || { \
		echo "make deps: installing cargo-fuzz"; $(CARGO) install --locked cargo-fuzz; }
	@if ! cmp -s $(PY_REQUIREMENTS) $(VENV)/requirements.txt 2>/dev/null; then \
		echo "make deps: creating $(VENV) with the independent verifiers"; \
		rm -rf $(VENV) && python3 -m venv $(VENV) && \
		$(VENV)/bin/pip install -q --disable-pip-version-check -r $(PY_REQUIREMENTS) && \
		cp $(PY_REQUIREMENTS) $(VENV)/requirements.txt; \
	fi
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		echo "make deps: installing nodejs and npm"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; }
	@if ! cmp -s $(WALLET)/package-lock.json $(WALLET)/node_modules/.package-lock.json.installed 2>/dev/null; then \
		echo "make deps: installing the test wallet's npm packages"; \
		npm ci --prefix $(WALLET) --no-audit --no-fund --loglevel=error && \
		cp $(WALLET)/package-lock.json $(WALLET)/node_modules/.package-lock.json.installed; \
	fi

# The independent Annex B validator (isomdl) the tests and the demo run:
# a crate of its own, outside the workspace and its dependency policy
# (target/annexb/debug/annexb-validate).
build: deps
	$(CARGO) build --workspace --bins
	$(CARGO) build --locked --manifest-path softhsm-tests/annexb/Cargo.toml --target-dir target/annexb

# cargo deny checks licences, bans and sources; its advisories check needs
# the RustSec database from GitHub and is not run here (see deny.toml).
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) deny check licenses bans sources
	python3 .ci/layers.py

# Every test: unit tests, doc tests, and the SoftHSM/swtpm suites (one
# process per test under nextest: PKCS#11 is process-global).
# Doc tests first: nextest's summary is the run's closing line.
test: lint build fuzz-smoke
	$(CARGO) test --workspace --doc
	$(CARGO) nextest run --workspace --no-fail-fast

# Coverage-guided fuzzing (fuzz/README.md): every parser of outside bytes.
# libFuzzer needs rustc's -Z sanitizer flags; RUSTC_BOOTSTRAP lets the
# machine's one stable toolchain take them. New inputs go to fuzz/corpus
# (not committed), the committed seeds stay in fuzz/seeds.
FUZZ_TARGETS := issue_request device_jwk resident_number policy_toml \
	mdoc_verify sd_jwt_verify audit certificates status_list wallet_request
FUZZ_SECONDS ?= 3600
FUZZ_SMOKE_SECONDS ?= 5
FUZZ_FLAGS := -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
FUZZ_RUN := RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz

fuzz: deps
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		$(FUZZ_RUN) $$t fuzz/corpus/$$t fuzz/seeds/$$t -- $(FUZZ_FLAGS) -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# What `make test` runs: each target for a few seconds from its seeds.
# Built without optimisation (--dev), which on 2 cores builds in about a
# third of the time: the smoke is there to catch a target that no longer
# builds or fails on its seeds, and runs every seed either way (sanitizer
# and debug assertions as in `make fuzz`).
FUZZ_SMOKE_RUN := $(FUZZ_RUN) --dev
fuzz-smoke: deps
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		$(FUZZ_SMOKE_RUN) $$t fuzz/corpus/$$t fuzz/seeds/$$t -- $(FUZZ_FLAGS) -max_total_time=$(FUZZ_SMOKE_SECONDS) 2>fuzz/corpus/$$t.log \
			|| { tail -40 fuzz/corpus/$$t.log; exit 1; }; \
		grep -h '^stat::number_of_executed_units' fuzz/corpus/$$t.log | sed "s/^/fuzz $$t: /"; \
	done

bench: deps
	$(CARGO) bench -p softhsm-tests --bench keys
	$(CARGO) bench -p softhsm-tests --bench credentials
	$(CARGO) bench -p softhsm-tests --bench registry
	$(CARGO) bench -p softhsm-tests --bench audit
	$(MAKE) bench-audit
	$(MAKE) bench-load
	$(MAKE) bench-rotation

# The tiled audit log grown to 10^8 entries (about 20 GB of disk under
# DOJANG_BENCH_DIR or the temporary directory; DOJANG_BENCH_AUDIT_ENTRIES
# sets another size).
bench-audit: deps
	$(CARGO) bench -p softhsm-tests --bench audit_tiles

# The daemon under load over mTLS; it runs the release binaries.
bench-load: deps
	$(CARGO) build --release --bins
	$(CARGO) bench -p softhsm-tests --bench daemon_load

bench-rotation: deps
	$(CARGO) build --release --bins
	$(CARGO) bench -p softhsm-tests --bench daemon_rotation

demo: build
	@appliance/scripts/demo.sh

demo-clean:
	@if [ -f .demo/dojangd.pid ]; then kill "$$(cat .demo/dojangd.pid)" 2>/dev/null || true; fi
	rm -rf .demo

clean:
	$(CARGO) clean
	rm -rf .demo
