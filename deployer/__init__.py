"""The erlmcp deployer: Marketplace values -> Helm values -> rendered manifests -> a cluster or a local run."""
