.PHONY: test deps bootstrap run
test:       ## install everything the tests need (as root on a fresh machine), then lint, type-check and test
	scripts/check

deps:       ## only install what the tests need: Debian packages, the test and lint toolchain
	scripts/test-deps

bootstrap:  ## only what running needs: .venv with the runtime dependencies (no root, no apt)
	scripts/bootstrap

run: bootstrap  ## proxy on the memory store, example policy, origin on :8000
	.venv/bin/sidecache run --policy policies/example.yaml
