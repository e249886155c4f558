"""The DIMSE door: our SCP (pynetdicom) for C-ECHO, C-STORE and C-FIND, over the shared use cases."""
