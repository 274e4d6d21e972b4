"""Comparison helpers the SciCode tests import as `scicode.compare.cmp`."""
