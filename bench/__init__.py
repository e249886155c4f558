"""Benchmarks: pacsbridge against independent DICOMweb servers on the same machine, same run."""
