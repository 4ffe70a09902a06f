# sluice — `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := bin

.PHONY: help build test test-e2e race lint check bench bench-smoke run generate generate-proto deps-test clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build sluiced, sluice-shim and sluice into ./bin
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/sluiced ./cmd/sluice-shim ./cmd/sluice

test: lint race fuzz-smoke bench-smoke bench-storm-smoke soak-smoke ## every test: lint, all tests under -race (unit and end-to-end), fuzz and benchmark smoke

race: ## all tests, with the race detector (the end-to-end suite in test/ runs real binaries and real git)
	$(GO) test -race -count=1 -timeout 45m ./...

test-e2e: ## only the end-to-end tests
	$(GO) test -count=1 -timeout 15m ./test/...

lint: ## go vet, gofmt, and generated code up to date
	$(GO) vet ./...
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*')); \
	  if [ -n "$$out" ]; then echo "gofmt needs to run on:"; echo "$$out"; exit 1; fi
	@if command -v protoc >/dev/null; then \
	  $(MAKE) -s generate-proto && git diff --exit-code -- agent/admitpb || \
	  { echo "generated protobuf code is stale: run make generate and commit"; exit 1; }; \
	else echo "lint: protoc not installed, generated code not checked (apt-get install protobuf-compiler)"; fi
	@$(MAKE) -s lint-ebpf

# The committed eBPF objects were built by Debian 12's clang 14.0.6 with
# libbpf-dev 1.1.2, which rebuilds them byte for byte. Another clang emits
# other bytes for the same source: then only the generated Go files are
# compared, and the objects are put back as they were.
EBPF_CLANG := 14.0.6
BPF_HELPERS_H ?= /usr/include/bpf/bpf_helpers.h
.PHONY: lint-ebpf
lint-ebpf: ## regenerate the eBPF objects (go generate ./ebpf/...) and fail on a diff; says so and checks nothing without clang and libbpf-dev
	@if ! command -v clang >/dev/null || [ ! -e $(BPF_HELPERS_H) ]; then \
	  echo "lint: clang or libbpf-dev not installed, eBPF objects not checked (apt-get install clang libbpf-dev)"; exit 0; fi; \
	if clang --version | head -1 | grep -q "version $(EBPF_CLANG)"; then \
	  $(GO) generate ./ebpf/... && git diff --exit-code -- ebpf/ || \
	  { echo "generated eBPF code is stale: run make generate and commit"; exit 1; }; \
	else \
	  keep=$$(mktemp -d) && cp ebpf/*_bpfel.o $$keep/ && \
	  $(GO) generate ./ebpf/...; rc=$$?; cp $$keep/*_bpfel.o ebpf/; rm -rf $$keep; \
	  [ $$rc -eq 0 ] && git diff --exit-code -- 'ebpf/*_bpfel.go' || \
	  { echo "generated eBPF Go code is stale: run make generate and commit"; exit 1; }; \
	  echo "lint: $$(clang --version | head -1) is not clang $(EBPF_CLANG): eBPF Go files checked, objects not compared"; \
	fi

check: lint race ## quick gate before committing

bench: build ## shim latency, admission throughput and agent RSS (p50/p95/p99/mean, ratios)
	$(GO) run ./bench -bin $(BIN) -n 500 -clients 64 -duration 5s -leases 1000

bench-smoke: build ## the benchmarks in a short smoke mode (CI)
	$(GO) run ./bench -bin $(BIN) -n 20 -clients 8 -duration 300ms -leases 50 -resident 10
	$(GO) run ./bench/execload -smoke

.PHONY: bench-storm bench-storm-smoke
bench-storm: build ## storm v2 (root, cgroup v1): ci-burst over git:// and fleet over ssh from 48 addresses, server on CPU 1 and clients on CPU 0, a sweep of host-wide pack-objects limits, then none/defaults/tuned/adaptive/best-static; report + plots in bench/storm/report/v2-DATE (< 20 min)
	$(GO) run ./bench/storm -bin $(BIN)

bench-storm-smoke: build ## storm v2 smoke (CI, < 2 min): tiny repositories, 6 clients from 6 addresses over git://, smart HTTP and ssh; fails if the agent did not see every client address or admitted nothing
	$(GO) run ./bench/storm -bin $(BIN) -smoke

run: build ## run sluiced with the embedded default config (socket and metrics per DESIGN.md)
	$(BIN)/sluiced

generate: generate-proto ## regenerate protobuf code and the eBPF objects (needs protoc, clang, libbpf-dev: see docs/building.md)
	$(GO) generate ./ebpf/...

generate-proto: ## regenerate only the protobuf code (needs protoc; lint checks it)
	protoc --go_out=. --go_opt=paths=source_relative \
	  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
	  --plugin=protoc-gen-go=$$($(GO) tool -n protoc-gen-go) \
	  --plugin=protoc-gen-go-grpc=$$($(GO) tool -n protoc-gen-go-grpc) \
	  agent/admitpb/admit.proto

.PHONY: deb
deb: ## reproducible Debian package bin/sluice_<version>_amd64.deb (dpkg-deb; SOURCE_DATE_EPOCH = last commit)
	GO=$(GO) packaging/build-deb.sh $(BIN) $(VERSION)

clean: ## remove build output
	rm -rf $(BIN)

# Fuzz targets as package:Func. Seeds are in the code (f.Add) and in each
# package's testdata/fuzz/<Func>/; a crash the fuzzer finds is written there
# too and becomes a regression test of plain `go test`.
FUZZ_TARGETS := policy:FuzzParse \
  gitwrap:FuzzParse gitwrap:FuzzRepo gitwrap:FuzzEnv gitwrap:FuzzParsePkt \
  agent/shimproto:FuzzDecodeServerMsg agent/shimproto:FuzzDecodeClientMsg agent/shimproto:FuzzClamp agent/shimproto:FuzzLookupID \
  agent:FuzzShimRequest agent:FuzzAdmitRequest agent:FuzzServeShim agent:FuzzCleanText agent:FuzzLeaseRecord
# A count, not a duration: Go 1.26's fuzz coordinator can fail a target with
# "context deadline exceeded" when a duration -fuzztime expires mid-exec
# (golang/go#75804, fixed in Go 1.27); a count has no deadline to race.
FUZZTIME ?= 20000x

.PHONY: fuzz-smoke soak soak-smoke
fuzz-smoke: ## run every fuzz target for FUZZTIME (20000 executions each, ~1 min in all; CI); `make fuzz-smoke FUZZTIME=300000x` for a real run
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "fuzz ./$$pkg $$fn ($(FUZZTIME))"; \
	  $(GO) test ./$$pkg -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) -parallel 2; done

soak: build ## admission soak with random kills against a real sluiced, 5 minutes; leak check of goroutines, fds, RSS
	$(GO) run ./bench/soak -bin $(BIN) -duration 5m

soak-smoke: build ## the soak in smoke mode, then 20 s of agent restarts every 2 s under 16 shims (at most 1 git behind a limit of 1, none without a lease, gauges back to 0) (CI)
	$(GO) run ./bench/soak -bin $(BIN) -smoke
	$(GO) run ./bench/soak -bin $(BIN) -restart-every 2s -duration 20s -shims 16

# Gitea end to end (issue 22): the first run builds Gitea (cgo, sqlite) into
# /var/cache/sluice-test/gitea-<version>/ and later runs reuse it. Without
# make, `go test ./test -run TestGitea` runs it only when that cache exists
# (SLUICE_TEST_GITEA=auto) and skips naming what is missing otherwise.
.PHONY: test-gitea gitea-build bench-gitea
gitea-build: ## build Gitea v1.26.0 (and with test/gitea-client-address.patch) for the Gitea tests once, cached in /var/cache/sluice-test (cold: ~6-10 min on 2 cores; cached: instant)
	GO=$(GO) test/gitea-build.sh v1.26.0
	GO=$(GO) test/gitea-build.sh v1.26.0 test/gitea-client-address.patch

test-gitea: gitea-build ## Gitea end to end (root): sluice wired per packaging/README.md's Gitea guide, clone/push over HTTP and SSH, limits, metrics
	SLUICE_TEST_GITEA=build $(GO) test -count=1 -timeout 15m -run '^TestGitea(|ServingOnly|ClientAddress)$$' -v ./test/

bench-gitea: gitea-build ## what the shim costs Gitea's API/web endpoints (shim / serving-only / none, interleaved) → bench/gitea/cost.md
	SLUICE_TEST_GITEA=build SLUICE_GITEA_BENCH=1 $(GO) test -count=1 -timeout 30m -run '^TestGiteaShimCost$$' -v ./test/

.PHONY: bench-gitea-storm
bench-gitea-storm: gitea-build ## storm v2's ci-burst or fleet over Gitea's HTTP (SLUICE_GITEA_STORM_SCENARIO, _MODES, _SWEEP; see bench/gitea/README.md) in a 1.5 GiB cgroup → bench/gitea/storm-<scenario>.md
	SLUICE_TEST_GITEA=build SLUICE_GITEA_STORM=1 $(GO) test -count=1 -timeout 120m -run '^TestGiteaStorm$$' -v ./test/
