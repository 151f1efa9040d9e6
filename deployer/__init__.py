"""The erlmcp deployer: Marketplace schema v2 values -> Helm values -> rendered manifests -> a cluster or a local run."""
