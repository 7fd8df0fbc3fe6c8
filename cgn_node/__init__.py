"""The regional CGN node: work and session services for DApps, the miner link, the central
link, the status service, and the work broker that ties them together (SPEC sections 3-4)."""
