"""The Marketplace side of the deployer: the schema and its rules, values to Helm values, the chart rendered and made
ready to apply, the deployer contract (``/data``), installing on a cluster, and the local run."""
