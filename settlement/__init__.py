"""Pricing, the microtransaction ledger, the daily rollup and the chain client (SPEC sections
8-10). Not implemented yet: the node records finished work through
``cgn_node.recorder.WorkRecorder``, which the ledger will implement."""
