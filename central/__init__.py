"""Central Service: accounts and credentials (Argon2id), the node and DService registries,
and the outbound links to every registered node (SPEC sections 3, 6 and 11)."""
