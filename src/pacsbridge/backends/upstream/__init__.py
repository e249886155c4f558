"""Upstream archives: a remote DICOMweb server or DIMSE PACS behind a bounded local cache."""
