"""Loopback fakes of the Google APIs that have no emulator (Compute Engine, Cloud Logging,
Cloud KMS), reached through the client libraries' own ``api_endpoint``; see each module."""
