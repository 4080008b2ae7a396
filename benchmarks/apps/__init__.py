"""Reference receivers the gateway is measured against, in the same run, on the same server."""
