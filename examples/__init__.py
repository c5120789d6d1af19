"""Small services instrumented the way the Frame Tracking guide describes (see README.md here)."""
