"""The software a cluster runs: scanning the client's environment, building it on instances."""
