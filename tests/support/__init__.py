"""Code the tests share that is not itself a test (see each module)."""
