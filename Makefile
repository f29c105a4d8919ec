# socksgate — see README.md. `make test` and `make demo` need root (network namespaces); on a
# fresh Debian/Ubuntu machine they install the packages they need first (tests/deps.sh).
# sudo's secure_path leaves out where Go is usually installed: `sudo make test` finds it anyway.
export PATH := $(PATH):/usr/local/go/bin
GO       ?= go
BIN      ?= bin/socksgate
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
PKGS     := ./...

.PHONY: all build test test-vm unit lint demo deps fuzz clean

.DEFAULT_GOAL := all
include cross.mk
include tests/bench/Makefile.inc

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/socksgate

deps:
	@bash tests/deps.sh

# Everything: lint, unit tests and the end-to-end tests in network namespaces, with the race
# detector on. The end-to-end tests skip (saying why) when not run as root.
test: deps lint
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

# The tests that need a kernel this machine may not have (nf_flow_table, for
# transparent.offload), in a qemu guest booting Debian's kernel with this machine's root
# filesystem (tests/vm/run.sh; emulated, so a few minutes).
test-vm: deps
	$(GO) test -c -o bin/redirect.test ./redirect
	tests/vm/run.sh bin/redirect.test -test.run 'TestOffloadFlowtable' -test.v -test.count=1

# Unit tests only (no root needed).
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /tests)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

demo: deps build
	bash tests/demo.sh $(BIN)

# Short run of every fuzz target (FUZZTIME per target).
FUZZTIME ?= 10s
fuzz:
	@bash tests/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin
