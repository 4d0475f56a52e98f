# ferry: build, demo and tests. `make test` is what CI runs (as root).
GO       ?= go
BIN      ?= bin/ferry
GOTAGS   ?=
STATICCHECK_VERSION ?= v0.8.2

.PHONY: all build demo test unit integration lint fuzz clean install soak

all: build

# -s -w: no symbol table or DWARF (panics and pprof still symbolize from
# the pclntab); a smaller binary costs ~3 ms less CPU on each of the execs
# that start ferry attach (the helper's, the sandbox's). Linked statically:
# no dynamic loader and libc to map and relocate at each of those execs
# (~3 ms each on the bench VM); netgo and osusergo keep name and user
# lookups in Go, as a static glibc cannot load NSS modules. The integration
# tests build ferry with this target (integration/nstest/build.go).
# GOTAGS=ferry_pprof builds in the profile server of FERRY_DEBUG_PPROF
# (bench/README.md).
BUILDFLAGS = -tags 'netgo osusergo $(GOTAGS)' -ldflags='-s -w -linkmode=external -extldflags=-static'
build:
	$(GO) build $(BUILDFLAGS) -o $(BIN) ./cmd/ferry

# The main job with its defaults: a namespace made by an unprivileged user
# gets a network from `ferry attach`; the demo fetches a page from the host's
# loopback through 10.0.2.2 and resolves a name through 10.0.2.3. Needs root
# (it makes a private "host" namespace and a test user).
demo: build
	$(GO) run ./integration/demo -ferry $(BIN)

# Every test: static checks, unit tests with the race detector, short fuzz
# runs, end-to-end tests in real namespaces (as root, running ferry as an
# unprivileged user), then one short run of the bench, so that the harness
# cannot rot (it fails on a problem in ferry's own rows, not on goals).
test: lint unit fuzz integration bench-quick

unit:
	$(GO) test -race -count=1 -timeout 5m $$($(GO) list ./... | grep -v /integration)

integration:
	$(GO) test -count=1 -timeout 20m -v ./integration/...

# The long churn: 1,000,000 short connections and 10,000 concurrent ones.
soak:
	FERRY_SOAK=1 $(GO) test -count=1 -timeout 90m -v -run '^TestChurn$$' ./integration/

# A count, not a duration: a -fuzztime duration can fail a clean run with
# "context deadline exceeded" (golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 50000x
fuzz:
	$(GO) test ./stack -run '^$$' -fuzz '^FuzzParseCIDR$$' -fuzztime $(FUZZTIME) -timeout 5m
	$(GO) test ./stack -run '^$$' -fuzz '^FuzzParseUpstream$$' -fuzztime $(FUZZTIME) -timeout 5m
	$(GO) test ./stack -run '^$$' -fuzz '^FuzzUpstreamsFromResolvConf$$' -fuzztime $(FUZZTIME) -timeout 5m
	$(GO) test ./stack -run '^$$' -fuzz '^FuzzParseDHCP$$' -fuzztime $(FUZZTIME) -timeout 5m
	$(GO) test ./portspec -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -timeout 5m
	$(GO) test ./stack -run '^$$' -fuzz '^FuzzFrames$$' -fuzztime $(FUZZTIME) -timeout 5m
	$(GO) test ./forward -run '^$$' -fuzz '^FuzzAPIHandle$$' -fuzztime $(FUZZTIME) -timeout 5m

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# ferry in $(PREFIX)/bin, and a slirp4netns symlink to it in
# $(PREFIX)/libexec/ferry (point podman's network_cmd_path or RootlessKit's
# --slirp4netns-binary there); a system slirp4netns is left alone.
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/libexec/ferry
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/ferry
	ln -sf $(PREFIX)/bin/ferry $(DESTDIR)$(PREFIX)/libexec/ferry/slirp4netns

clean:
	rm -rf bin

# Side-by-side benchmark (as root; see bench/README.md): ferry against
# slirp4netns and pasta, run rootless inside a private namespace. Installs
# slirp4netns, passt and iperf3 when missing; results go to bench/results/.
# BENCH_FLAGS passes more flags, e.g. BENCH_FLAGS='-runs 9 -secs 5'.
BENCH_FLAGS ?=
.PHONY: bench bench-quick
bench: build
	$(GO) run ./bench -ferry $(BIN) $(BENCH_FLAGS)

# One short run of each, so that the harness cannot rot.
bench-quick: build
	$(GO) run ./bench -ferry $(BIN) -quick $(BENCH_FLAGS)
