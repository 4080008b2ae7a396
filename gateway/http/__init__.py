"""The transport edge: Litestar routes that hand requests to the ingest pipeline and the stores."""
