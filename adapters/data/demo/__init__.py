"""Sample knowledge base and feedback for `loopbot demo` (the Whisker Club, a cat owners' community)."""
