# ibuild — daemonless, rootless OCI image builder.
GO       ?= go
TAGS     := exclude_graphdriver_btrfs
GOFLAGS  := -tags $(TAGS)
BIN      := bin/ibuild
PREFIX   ?= /usr/local
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
FUZZTIME ?= 20s
TESTTIMEOUT ?= 25m

.PHONY: build install demo test test-deps unit fuzz bench lint clean compat

build:
	CGO_ENABLED=1 $(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ibuild

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/ibuild

# demo builds testdata/demo offline into the default store and shows it.
demo: build
	./$(BIN) build --progress plain -t demo:1 testdata/demo
	./$(BIN) images
	./$(BIN) inspect demo:1

# test installs what the tests need (when missing) and runs every test.
test: test-deps lint unit fuzz

test-deps:
	@bash .ci/install-test-deps.sh

unit:
	$(GO) test $(GOFLAGS) -count=1 -timeout $(TESTTIMEOUT) ./...

fuzz:
	$(GO) test $(GOFLAGS) -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./builder/dockerfile
	$(GO) test $(GOFLAGS) -run '^$$' -fuzz FuzzExpandBound -fuzztime $(FUZZTIME) ./builder/dockerfile

# bench runs every benchmark on a 1 GiB tree (override with
# IBUILD_BENCH_SIZE_MB=N), one package at a time so timings do not overlap,
# for at least 20s each so the 1 GiB commits repeat. About 14 minutes on 2
# cores. The RUN benchmark needs root and /bin/busybox, and compares with
# buildah when it is installed (make test-deps; IBUILD_BENCH_BUILDAH_RUNS,
# IBUILD_BENCH_BUILDAH_DRIVER). The build cache benchmark needs both, on
# a 200 MB context (IBUILD_BENCH_CACHE_MB, IBUILD_BENCH_CACHE_RUNS). The
# registry push/pull benchmarks use a 500 MB image (IBUILD_BENCH_PUSH_MB)
# and need docker-registry and skopeo; the CI matrix benchmark also needs
# root and an arm64 binfmt_misc handler (.ci/binfmt.sh). The extraction memory benchmark
# extracts tars of 100,000 and 1,000,000 entries four times (15-40 minutes;
# IBUILD_BENCH_BOMB_ENTRIES=N sets the larger count).
# See docs/performance.md.
bench:
	IBUILD_BENCH_SIZE_MB=$${IBUILD_BENCH_SIZE_MB:-1024} \
	IBUILD_BENCH_PUSH_MB=$${IBUILD_BENCH_PUSH_MB:-500} \
	$(GO) test $(GOFLAGS) -p 1 -count=1 -run '^$$' -bench . -benchtime 20s -benchmem -timeout 120m ./...

# compat runs the docker-exact suite: every case of the three corpora
# (buildah v1.42.0's tests/bud, BuildKit v0.34.2's Dockerfile integration
# tests, testdata/dockerfiles and testdata/compat) built by BuildKit
# v0.34.2 and by ibuild, images compared. Needs root, runc and
# docker-registry; builds BuildKit into /var/cache/ibuild-compat on first
# use (a few minutes). COMPAT_RUN=REGEXP narrows it to matching case names;
# the full log goes to COMPAT_LOG.
# Ends with "compat: P/T cases match docker (BuildKit v0.34.2); D documented
# deviations". See docs/dockerfile.md.
COMPAT_PARALLEL ?= 3
COMPAT_LOG ?= bin/compat.log
compat:
	@mkdir -p $(dir $(COMPAT_LOG)); echo "compat: running the suite (log: $(COMPAT_LOG))"; IBUILD_COMPAT=all IBUILD_COMPAT_RUN='$(COMPAT_RUN)' \
	$(GO) test $(GOFLAGS) -count=1 -timeout 45m -parallel $(COMPAT_PARALLEL) -run '^TestCompat$$' -v ./builder/compat \
		> $(COMPAT_LOG) 2>&1; rc=$$?; \
	grep -E '^compat: (skip|DIFFERS|[0-9]+ cases|.* matches docker now)' $(COMPAT_LOG); grep -E -- '^(--- FAIL|FAIL|ok)' $(COMPAT_LOG) | tail -3; \
	grep -E '^compat: [0-9]+/[0-9]+ cases match' $(COMPAT_LOG) | tail -1; exit $$rc

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(GOFLAGS) ./...
	$(GO) run .ci/doccheck.go .

clean:
	rm -rf bin
