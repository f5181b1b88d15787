"""Explanation: attention maps over frames, and how well they point at the active object."""
