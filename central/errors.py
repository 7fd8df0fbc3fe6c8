"""Central's errors."""

from cgn_common.errors import UnauthenticatedError

#: One message whether the account is unknown or the key wrong, so ids cannot be probed.
BAD_CREDENTIALS = "invalid account id or API key"


class BadCredentialsError(UnauthenticatedError):
    """The account id or its key did not verify."""

    reason = "BAD_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__(BAD_CREDENTIALS)
