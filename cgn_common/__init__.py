"""Helpers shared by every CGN process: errors, configuration, logging, gRPC plumbing."""
