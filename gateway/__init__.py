"""The REST gateway: translates DApp HTTP into node gRPC and back (SPEC sections 2-4)."""
