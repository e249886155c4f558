"""Pure values and rules shared by every door: no sockets, no files, no frameworks."""
