"""nachos core: configuration, data pipeline, tracking and run plumbing shared by every stage."""
__version__ = "0.1.0"
