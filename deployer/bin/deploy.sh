#!/bin/sh
# The deployer Job's entrypoint (mpdev install, Marketplace click-to-deploy): install next to the placeholder
# Application from /data, mark it Success or Failed.
exec python -m deployer marketplace "$@"
