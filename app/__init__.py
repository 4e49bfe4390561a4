"""modelport: convert, prove, measure and serve trained models.

Importing this package must stay fast and free of ML frameworks: heavy imports live inside
the functions that need them.
"""

__version__ = "0.1.0"
