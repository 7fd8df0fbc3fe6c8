"""The ``cgn`` command: one entry point for every CGN process and the local sandbox."""

import os

# Our processes fork children (the sandbox its processes, a miner its DServices) with a
# preexec_fn while gRPC threads run. With gRPC's fork support on, the forked child restarts
# gRPC's poller, finds its epoll descriptor closed by subprocess's close_fds and aborts
# before exec (grpc/grpc#43055: seen here as a node dying with SIGABRT at sandbox start, in one of
# three full test runs on a busy machine). Nothing
# here uses gRPC across fork(), so turn fork support off before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
