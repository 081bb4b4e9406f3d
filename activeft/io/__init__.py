"""Where data lives: URIs and their storage backends, the stage protocol (leases, staged commits), the
embedding store and labels tables."""
