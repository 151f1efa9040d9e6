#!/bin/sh
# The entrypoint mpdev verify asks for: install with /data-test laid over /data, wait until ready for 30 s,
# run the tester Pods, delete them; exit non-zero if anything failed.
exec python -m deployer marketplace --test "$@"
