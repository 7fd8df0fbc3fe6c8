"""The miner: fitness test, the link to a node, and the DService runtime (SPEC section 7)."""
