"""The FHIR R4 door (``/fhir``): ServiceRequest, Patient, ImagingStudy, Endpoint and the CapabilityStatement."""
