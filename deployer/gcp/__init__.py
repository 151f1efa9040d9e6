"""The Google Cloud platforms of the seed design outside the Kubernetes app: the network, the GKE cluster, Secret
Manager, Cloud Run and a Compute Engine managed instance group, each as ``python -m deployer <platform> plan |
apply [--dry-run]`` from one configuration file (:mod:`deployer.gcp.config`)."""
