"""adapters library."""
