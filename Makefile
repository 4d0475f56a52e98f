# ferry: build, demo and tests. `make test` is what CI runs (as root).
GO       ?= go
BIN      ?= bin/ferry
STATICCHECK_VERSION ?= v0.8.2

.PHONY: all build demo test unit integration lint fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/ferry

# The main job with its defaults: a namespace made by an unprivileged user
# gets a network from `ferry attach`; the demo fetches a page from the host's
# loopback through 10.0.2.2 and resolves a name through 10.0.2.3. Needs root
# (it makes a private "host" namespace and a test user).
demo: build
	$(GO) run ./integration/demo -ferry $(BIN)

# Every test: static checks, unit tests with the race detector, short fuzz
# runs, then end-to-end tests in real namespaces (as root, running ferry as
# an unprivileged user).
test: lint unit fuzz integration

unit:
	$(GO) test -race -count=1 -timeout 5m $$($(GO) list ./... | grep -v /integration)

integration:
	$(GO) test -count=1 -timeout 20m -v ./integration/...

FUZZTIME ?= 10s
fuzz:
	$(GO) test ./stack -run '^$$' -fuzz '^FuzzParseCIDR$$' -fuzztime $(FUZZTIME)
	$(GO) test ./stack -run '^$$' -fuzz '^FuzzParseUpstream$$' -fuzztime $(FUZZTIME)
	$(GO) test ./stack -run '^$$' -fuzz '^FuzzUpstreamsFromResolvConf$$' -fuzztime $(FUZZTIME)
	$(GO) test ./portspec -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

clean:
	rm -rf bin
