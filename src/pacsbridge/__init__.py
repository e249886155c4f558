"""pacsbridge: an interoperability proxy between PACS, DICOMweb viewers, FHIR EMRs, GDT and eCRFs."""

__version__ = "0.1.0"
