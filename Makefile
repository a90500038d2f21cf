# Thin wrapper: scripts/ do the work (install missing packages, configure once, build, run).
.PHONY: all demo test test-sanitize bench clean
all:
	@scripts/setup.sh build
demo:
	@scripts/setup.sh build && ./build/tools/draft-run
test:
	@scripts/test.sh
test-sanitize:
	@scripts/test.sh --sanitize
bench:
	@bench/run_cpu_bench.sh
clean:
	rm -rf build build-asan
