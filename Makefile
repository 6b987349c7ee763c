.PHONY: test run bench
test:  ## install everything the tests need, then lint, type-check and test
	scripts/check

run:   ## proxy on the memory store, example policy, origin on :8000
	.venv/bin/sidecache run --policy policies/example.yaml
